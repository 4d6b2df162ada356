"""Hand-crafted H&E morphology features that need no downloaded weights."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.color import rgb2hed

#: Side length in pixels to which every crop is resized before the statistics are computed.
INPUT_SIZE = 64

#: Feature names, in column order, with what each measures. "Tissue pixels" excludes glass (bright,
#: unsaturated), blacked-out background and constant padding; statistics fall back to all pixels when a
#: crop has almost no tissue. Stain optical densities are colour deconvolution units of
#: :func:`skimage.color.rgb2hed` (Ruifrok & Johnston); pixel counts refer to the 64 × 64 resized crop.
FEATURE_DESCRIPTIONS: dict[str, str] = {
    **{
        f"{stain}_{stat}": f"{name} optical density of tissue pixels: {what}"
        for stain, name in (("h", "haematoxylin"), ("e", "eosin"), ("d", "DAB/residual"))
        for stat, what in (
            ("mean", "mean"),
            ("std", "standard deviation"),
            ("q10", "10th percentile"),
            ("q50", "median"),
            ("q90", "90th percentile"),
        )
    },
    "r_mean": "mean red of tissue pixels (0-1)",
    "g_mean": "mean green of tissue pixels (0-1)",
    "b_mean": "mean blue of tissue pixels (0-1)",
    "saturation_mean": "mean HSV saturation of tissue pixels",
    "gray_mean": "mean luminance of tissue pixels (0-1)",
    "gray_std": "standard deviation of luminance of tissue pixels",
    "tissue_fraction": "fraction of the crop covered by tissue",
    "nuclei_fraction": "fraction of tissue pixels whose haematoxylin density exceeds the nuclear threshold",
    "nuclei_count": "number of connected nuclear-pixel blobs of at least 3 pixels",
    "nuclei_area_mean": "mean area in pixels of those blobs (0 without blobs)",
    "glcm_contrast": "grey-level co-occurrence contrast of luminance (32 levels, distance 1, mean of 4 angles)",
    "glcm_homogeneity": "grey-level co-occurrence homogeneity",
    "glcm_energy": "grey-level co-occurrence energy (square root of the angular second moment)",
    "glcm_correlation": "grey-level co-occurrence correlation",
    "gradient_mean": "mean luminance gradient magnitude (central differences, per pixel)",
    "gradient_std": "standard deviation of the luminance gradient magnitude",
}
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURE_DESCRIPTIONS)

_LUMINANCE = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)  # as skimage.color.rgb2gray
_DARK_MAX = 0.1  # blacked-out background (and black padding) has every channel below this
_GLASS_MIN, _GLASS_RANGE = 0.8, 0.1  # glass: all channels bright and nearly equal
_NUCLEAR_H = 0.12  # haematoxylin density above which a pixel is counted as nuclear
_MIN_BLOB = 3
_MIN_TISSUE_PIXELS = 16
_GLCM_LEVELS = 32
_GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)


def histology_stats(rgb: np.ndarray) -> np.ndarray:
    """Morphology features of a batch of RGB crops.

    Parameters
    ----------
    rgb
        ``(n, INPUT_SIZE, INPUT_SIZE, 3)`` float32 RGB in [0, 1].

    Returns
    -------
    ``(n, len(FEATURE_NAMES))`` float32, columns as :data:`FEATURE_NAMES`, finite for finite input.

    """
    rgb = np.asarray(rgb, dtype=np.float32)
    n = rgb.shape[0]
    flat = rgb.reshape(n, -1, 3)
    # channel-wise maximum and minimum: numpy reduces a length-3 last axis far slower than this
    hi = np.maximum(np.maximum(flat[..., 0], flat[..., 1]), flat[..., 2])
    lo = np.minimum(np.minimum(flat[..., 0], flat[..., 1]), flat[..., 2])
    background = (hi < _DARK_MAX) | ((lo > _GLASS_MIN) & (hi - lo < _GLASS_RANGE))
    tissue = ~background
    tissue_fraction = tissue.mean(1)
    # statistics over tissue pixels; crops with (almost) no tissue use all their pixels instead
    mask = np.where((tissue.sum(1) >= _MIN_TISSUE_PIXELS)[:, None], tissue, True)
    weight = mask / mask.sum(1, keepdims=True)

    hed = rgb2hed(flat).astype(np.float32)  # the statistics below stay in float32
    gray = flat @ _LUMINANCE
    saturation = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0)

    columns = []
    for channel in range(3):
        values = hed[..., channel]
        mean = (values * weight).sum(1)
        std = np.sqrt(np.maximum((values**2 * weight).sum(1) - mean**2, 0))
        columns += [mean, std, *_masked_quantiles(values, mask, (0.1, 0.5, 0.9))]
    columns += [(flat[..., c] * weight).sum(1) for c in range(3)]
    columns.append((saturation * weight).sum(1))
    gray_mean = (gray * weight).sum(1)
    columns += [gray_mean, np.sqrt(np.maximum((gray**2 * weight).sum(1) - gray_mean**2, 0))]
    columns.append(tissue_fraction)

    nuclear = (hed[..., 0] > _NUCLEAR_H) & tissue
    columns.append(nuclear.sum(1) / np.maximum(tissue.sum(1), 1))
    count, mean_area = _blob_stats(nuclear.reshape(n, *rgb.shape[1:3]))
    columns += [count, mean_area]

    gray_img = gray.reshape(n, *rgb.shape[1:3])
    columns += list(_glcm_props(gray_img))
    gy, gx = np.gradient(gray_img, axis=(1, 2))
    magnitude = np.sqrt(gx**2 + gy**2).reshape(n, -1)
    columns += [magnitude.mean(1), magnitude.std(1)]

    return np.stack(columns, axis=1).astype(np.float32)


def _masked_quantiles(values: np.ndarray, mask: np.ndarray, qs: tuple[float, ...]) -> list[np.ndarray]:
    # Sort with excluded pixels pushed to the end, then index each row at its own quantile positions
    # (linear interpolation, as numpy's default method).
    ordered = np.sort(np.where(mask, values, np.inf), axis=1)
    count = mask.sum(1)
    rows = np.arange(values.shape[0])
    out = []
    for q in qs:
        position = q * (count - 1)
        below = np.floor(position).astype(np.int64)
        above = np.minimum(below + 1, count - 1)
        frac = (position - below).astype(np.float32)
        out.append(ordered[rows, below] * (1 - frac) + ordered[rows, above] * frac)
    return out


def _blob_stats(nuclear: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = nuclear.shape[0]
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)  # 4-connected within a crop, never across
    labels, n_labels = ndimage.label(nuclear, structure=structure)
    area = np.bincount(labels.ravel(), minlength=n_labels + 1)[1:]
    crop_of_label = np.zeros(n_labels + 1, dtype=np.int64)
    crop_of_label[labels.ravel()] = np.repeat(np.arange(n), nuclear[0].size)
    crop_of_label = crop_of_label[1:]
    keep = area >= _MIN_BLOB
    count = np.bincount(crop_of_label[keep], minlength=n).astype(np.float32)
    total = np.bincount(crop_of_label[keep], weights=area[keep], minlength=n)
    return count, (total / np.maximum(count, 1)).astype(np.float32)


def _glcm_props(gray: np.ndarray) -> tuple[np.ndarray, ...]:
    """:func:`skimage.feature.graycoprops` of each ``(h, w)`` crop of ``gray`` ``(n, h, w)`` in [0, 1].

    Contrast, homogeneity, energy and correlation of a symmetric, normalised co-occurrence matrix
    (:data:`_GLCM_LEVELS` grey levels, distance 1), averaged over four angles; ``(n,)`` float32 each.
    The matrices of the whole batch are counted at once (one :func:`numpy.bincount` per angle) and the
    properties follow :func:`~skimage.feature.graycoprops`' formulas in float64, so the values are
    those of :func:`~skimage.feature.graycomatrix` and ``graycoprops`` crop by crop.
    """
    n, h, w = gray.shape
    levels = np.clip((gray * _GLCM_LEVELS).astype(np.int64), 0, _GLCM_LEVELS - 1)
    n_pairs = _GLCM_LEVELS**2
    base = (np.arange(n) * n_pairs)[:, None, None]
    counts = np.empty((n, len(_GLCM_ANGLES), _GLCM_LEVELS, _GLCM_LEVELS))
    for a, angle in enumerate(_GLCM_ANGLES):
        # the pixel pairs graycomatrix counts: (r, c) with (r + dr, c + dc), both inside the crop
        dr, dc = round(np.sin(angle)), round(np.cos(angle))
        rows, cols = slice(max(0, -dr), min(h, h - dr)), slice(max(0, -dc), min(w, w - dc))
        first = levels[:, rows, cols]
        second = levels[:, rows.start + dr : rows.stop + dr, cols.start + dc : cols.stop + dc]
        code = base + first * _GLCM_LEVELS + second
        counts[:, a] = np.bincount(code.ravel(), minlength=n * n_pairs).reshape(n, _GLCM_LEVELS, _GLCM_LEVELS)
    glcm = counts + counts.transpose(0, 1, 3, 2)  # symmetric
    totals = glcm.sum(axis=(2, 3), keepdims=True)
    glcm /= np.where(totals == 0, 1, totals)
    i = np.arange(_GLCM_LEVELS, dtype=np.float64)[:, None]
    j = i.T
    pairs = glcm.reshape(n, len(_GLCM_ANGLES), n_pairs)
    contrast = pairs @ ((i - j) ** 2).ravel()
    homogeneity = pairs @ (1.0 / (1.0 + (i - j) ** 2)).ravel()
    energy = np.sqrt(np.einsum("nap,nap->na", pairs, pairs))
    diff_i = i - (i * glcm).sum(axis=(2, 3))[..., None, None]
    diff_j = j - (j * glcm).sum(axis=(2, 3))[..., None, None]
    std_i = np.sqrt((glcm * diff_i**2).sum(axis=(2, 3)))
    std_j = np.sqrt((glcm * diff_j**2).sum(axis=(2, 3)))
    cov = (glcm * (diff_i * diff_j)).sum(axis=(2, 3))
    flat = (std_i < 1e-15) | (std_j < 1e-15)  # graycoprops' convention for constant crops
    correlation = np.where(flat, 1.0, cov / np.where(flat, 1.0, std_i * std_j))
    return tuple(p.mean(axis=1).astype(np.float32) for p in (contrast, homogeneity, energy, correlation))
