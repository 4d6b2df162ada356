"""spacrd's calls are quiet: no Lightning banners, tips or third-party deprecations; the user's own warnings pass."""

import warnings

import lightning.pytorch as pl
import pytest
import scvi
from _synthetic import source_of, target_of, tiny_sections

from spacrd.model import SpaCRD

EPOCHS = {"align_epochs": 1, "fuse_epochs": 1, "classify_epochs": 1}


class _Warns(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        warnings.warn("the user's own warning", UserWarning, stacklevel=1)


def test_training_and_prediction_print_only_spacrds_lines(capfd):
    scvi.settings.seed = 0
    data = tiny_sections()
    source = source_of(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SpaCRD.setup_anndata(
            source, layer="counts", labels_key="cancer", batch_key="section", image_key="X_histology"
        )
        model = SpaCRD(source, n_top_genes=30, n_embed=16, n_heads=2, n_latent=4)
        model.train(**EPOCHS, enable_progress_bar=False, callbacks=[_Warns()])
        model.predict(target_of(data))
    out, err = capfd.readouterr()
    text = out + err
    for noise in (
        "GPU available",
        "TPU available",
        "Tip:",
        "Trainer.fit` stopped",
        "Generating sequential column names",
    ):
        assert noise not in text, noise
    assert "spacrd: set-up: 128 spots in 2 section(s)" in text
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "LeafSpec" in m or "log_every_n_steps" in m or "Sparse" in m], messages
    # a warning raised by the user's own callback inside training still reaches the user
    assert messages.count("the user's own warning") == 3


def test_progress_bars_name_the_stages(monkeypatch):
    """One scvi-tools progress bar per stage, labelled with the stage and the epoch it is in."""
    from spacrd import _logging
    from spacrd.model import _training

    bars = []

    def spy(title):
        bars.append(_logging.stage_progress_bar(title))
        return bars[-1]

    monkeypatch.setattr(_training, "stage_progress_bar", spy)
    scvi.settings.seed = 0
    source = source_of(tiny_sections())
    SpaCRD.setup_anndata(
        source, layer="counts", labels_key="cancer", batch_key="section", image_key="X_histology"
    )
    SpaCRD(source, n_top_genes=30, n_embed=16, n_heads=2, n_latent=4).train(**EPOCHS)
    descriptions = [bar.main_progress_bar.desc.rstrip(": ") for bar in bars]
    assert descriptions == [
        "Stage I: modality alignment: epoch 1/1",
        "Stage II: fusion VAE: epoch 1/1",
        "Stage III: classifier: epoch 1/1",
    ]


@pytest.mark.parametrize("level", ["WARNING"])
def test_spacrds_own_lines_can_be_silenced(capfd, level):
    import logging

    logging.getLogger("spacrd").setLevel(level)
    try:
        source = source_of(tiny_sections())
        SpaCRD.setup_anndata(source, layer="counts", labels_key="cancer", batch_key="section")
        assert "spacrd: set-up" not in capfd.readouterr().err
    finally:
        logging.getLogger("spacrd").setLevel(logging.INFO)
