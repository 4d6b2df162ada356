"""Write ``expected.json``: the model_format1 recipe trained by today's code, for ``test_fitted_state``.

Run from ``tests/``: ``PYTHONPATH=../src:. python data/fresh_training/make.py``. Training draws its
dropout masks from a different random stream than the format-1 reference's code did, so a fresh
training is compared with this file, and the format-1 model's own predictions with ``model_format1``.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "model"))
from test_fitted_state import UNSMOOTHED, train_fresh  # noqa: E402

model, target = train_fresh()
expected = {
    "calibration": model.fitted_state.calibration.to_dict(),
    "ctr_prob_source": model.predict(target.copy(), call="source").tolist(),
    "calibration_unsmoothed": model.calibrate(**UNSMOOTHED).to_dict(),
    "ctr_prob_unsmoothed": model.predict(target.copy(), **UNSMOOTHED).tolist(),
}
(Path(__file__).resolve().parent / "expected.json").write_text(json.dumps(expected, indent=1))
