"""Write ``expected.json``: the model_format1 recipe trained by today's code, for ``test_fitted_state``.

Run from ``tests/``: ``PYTHONPATH=../src:. python data/fresh_training/make.py``. Training draws its
dropout masks from a different random stream than the format-1 reference's code did, so a fresh
training is compared with this file, and the format-1 model's own predictions with ``model_format1``.
"""

import json
import sys
import warnings
from pathlib import Path

import scvi

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "model"))
from test_fitted_state import EPOCHS, NET, UNSMOOTHED, _data  # noqa: E402

from spacrd.model import SpaCRD  # noqa: E402

source, target = _data()
scvi.settings.seed = 0
model = SpaCRD(source, **NET)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model.train(**EPOCHS, enable_progress_bar=False)
expected = {
    "calibration": model.fitted_state.calibration.to_dict(),
    "ctr_prob_source": model.predict(target.copy(), call="source").tolist(),
    "calibration_unsmoothed": model.calibrate(**UNSMOOTHED).to_dict(),
    "ctr_prob_unsmoothed": model.predict(target.copy(), **UNSMOOTHED).tolist(),
}
(Path(__file__).resolve().parent / "expected.json").write_text(json.dumps(expected, indent=1))
