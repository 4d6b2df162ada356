import spacrd


def test_tl_exposes_only_the_anndata_level_api():
    """The array-level helpers are private: ``tl`` keeps the calls on an AnnData and the calibration type."""
    assert spacrd.tl.__all__ == ["Calibration", "call", "ctr_regions"]
    assert sorted(spacrd.tl.__all__) == spacrd.tl.__all__
    for name in ("postprocess", "PostprocessSettings", "gmm_threshold", "mixture_level", "section_neighbors"):
        assert not hasattr(spacrd.tl, name), name
