"""Near-duplicate images across splits: perceptual hashes per image and the pairs within a
Hamming distance.

A resized, re-encoded, brightened or slightly cropped copy of a training image in the test
split has another sha256 but nearly the same perceptual hash (:func:`phash`, bit for bit
``imagehash.phash``: the signs of the low frequencies of a 32x32 grey DCT, 64 bits). A crop
moves those frequencies, so each image also gets the hashes of its central 94 % and 86 %: a
copy cropped by a few percent per side hashes like one of those. :func:`near_pairs` compares
the whole-image hashes of one split with all hashes of the others and back (vectorized XOR and
popcount, in chunks), and keeps the pairs at most ``max_distance`` bits apart; exact copies are
the ``leakage`` rule's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from tlops.data.sheets import SheetRow, draw_sheet

#: Images are reduced to at least this side before hashing (the hash itself looks at 32x32).
HASH_INPUT_SIDE = 64
#: Central crops hashed besides the whole image (fractions of width and height kept).
CENTER_CROPS = (0.94, 0.86)
#: Rows of one split compared at a time against another (keeps temporaries in cache).
CHUNK = 64
#: Up to this many pairs, every pair is compared; above, the band search (same pairs).
BRUTE_PAIRS = 4_000_000
#: Rows of one split matched at a time in the band search (bounds its temporaries).
BAND_CHUNK = 8192


#: Side of the grey image whose DCT is taken (imagehash: hash_size 8 x highfreq_factor 4).
DCT_SIDE = 32
#: Side of the block of lowest frequencies whose signs against their median are the 64 bits.
HASH_SIDE = 8
#: Coefficients closer than this to their median may compare otherwise under scipy's FFT
#: rounding (a flat image, a symmetric one): such a hash is computed as imagehash does.
TIE_TOLERANCE = 1e-3


def _dct_matrix() -> np.ndarray:
    """The rows of scipy's unnormalized DCT-II of length :data:`DCT_SIDE` for the
    :data:`HASH_SIDE` lowest frequencies: ``2 cos(pi k (2n + 1) / 2N)``."""
    k = np.arange(HASH_SIDE, dtype=np.float64)[:, None]
    n = np.arange(DCT_SIDE, dtype=np.float64)[None, :]
    return 2.0 * np.cos(np.pi * k * (2.0 * n + 1.0) / (2.0 * DCT_SIDE))


_DCT = _dct_matrix()


def _hash_pixels(gray: Any) -> np.ndarray:
    """The (32, 32) uint8 pixels imagehash hashes: a mode ``L`` image resized with LANCZOS."""
    small = gray.resize((DCT_SIDE, DCT_SIDE), Image.Resampling.LANCZOS)
    return np.frombuffer(small.tobytes(), dtype=np.uint8).reshape(DCT_SIDE, DCT_SIDE)


def _exact_bits(pixels: np.ndarray) -> np.ndarray:
    """The 64 bits of one hash exactly as ``imagehash.phash`` computes them (scipy's DCT)."""
    import scipy.fftpack

    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)
    low = dct[:HASH_SIDE, :HASH_SIDE]
    bits: np.ndarray = (low > np.median(low)).reshape(-1)
    return bits


def _hash_bits(pixels: np.ndarray) -> np.ndarray:
    """(n, 64) bits of ``n`` stacked (32, 32) pixel blocks: the signs of the 8x8 lowest
    frequencies of the 2-D DCT-II against their median, row by row like ``imagehash``.

    The low block is two small matrix products (not two full FFTs); a hash with a coefficient
    within :data:`TIE_TOLERANCE` of its median is redone the exact way, so the bits always
    equal ``imagehash.phash``'s.
    """
    low = (_DCT @ pixels.astype(np.float64) @ _DCT.T).reshape(len(pixels), -1)
    ordered = np.sort(low, axis=1)
    middle = HASH_SIDE * HASH_SIDE // 2
    median = (ordered[:, middle - 1] + ordered[:, middle]) / 2
    bits: np.ndarray = low > median[:, None]
    for i in np.flatnonzero(ordered[:, middle] - ordered[:, middle - 1] < 2 * TIE_TOLERANCE):
        bits[i] = _exact_bits(pixels[i])
    return bits


def _hex(bits: np.ndarray) -> str:
    """64 bits (first bit most significant) as 16 hex digits, like ``str(ImageHash)``."""
    return np.packbits(bits).tobytes().hex()


def phash(img: Any) -> str:
    """``str(imagehash.phash(img))`` (hash size 8, high-frequency factor 4), bit for bit."""
    return _hex(_hash_bits(_hash_pixels(img.convert("L"))[None])[0])


def perceptual_hash(img: Any) -> str | None:
    """The 64-bit pHashes (:func:`phash`) of a decoded Pillow image and of its central crops,
    as ``"whole,crop94,crop86"`` (16 hex digits each); None if they cannot be made."""
    try:
        gray = img.convert("L")
        factor = max(1, min(gray.size) // HASH_INPUT_SIDE)
        if factor > 1:  # a box reduction first: the hash's own resize then costs nothing
            gray = gray.reduce(factor)
        width, height = gray.size
        blocks = [_hash_pixels(gray)]
        for keep in CENTER_CROPS:
            dx, dy = round(width * (1 - keep) / 2), round(height * (1 - keep) / 2)
            blocks.append(_hash_pixels(gray.crop((dx, dy, width - dx, height - dy))))
        return ",".join(_hex(bits) for bits in _hash_bits(np.stack(blocks)))
    except (OSError, ValueError):
        return None


def _as_ints(hashes: pd.Series, index: int) -> np.ndarray:
    """The ``index``-th hash of each row (0: whole image) as unsigned 64-bit integers."""
    return np.array([int(h.split(",")[index], 16) for h in hashes], dtype=np.uint64)


def _brute_pairs(
    left: np.ndarray, right: np.ndarray, max_distance: int
) -> list[tuple[int, int, int]]:
    """:func:`hamming_pairs` by comparing every pair (in chunks of ``left``)."""
    found: list[tuple[int, int, int]] = []
    for start in range(0, len(left), CHUNK):
        block = np.bitwise_count(left[start : start + CHUNK, None] ^ right[None, :])
        rows, cols = np.nonzero(block <= max_distance)
        found += [
            (start + int(i), int(j), int(block[i, j])) for i, j in zip(rows, cols, strict=True)
        ]
    return found


def _bands(count: int) -> list[tuple[int, int]]:
    """(shift, mask) of ``count`` disjoint bit bands that together cover the 64 bits."""
    widths = [64 // count + (1 if k < 64 % count else 0) for k in range(count)]
    shifts = np.cumsum([0, *widths[:-1]])
    return [(int(shift), (1 << width) - 1) for shift, width in zip(shifts, widths, strict=True)]


def _band_candidates(
    left_keys: np.ndarray, right_keys: np.ndarray, start: int
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (into the left chunk starting at ``start``, into right) of equal keys."""
    order = np.argsort(right_keys, kind="stable")
    ordered = right_keys[order]
    first = np.searchsorted(ordered, left_keys, "left")
    counts = np.searchsorted(ordered, left_keys, "right") - first
    total = int(counts.sum())
    lefts = np.repeat(np.arange(len(left_keys)), counts)
    offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    return start + lefts, order[np.repeat(first, counts) + offsets]


def hamming_pairs(
    left: np.ndarray, right: np.ndarray, max_distance: int
) -> list[tuple[int, int, int]]:
    """(i, j, distance) for every ``left[i]``, ``right[j]`` at most ``max_distance`` bits apart.

    Small inputs compare every pair. Larger ones search by bands (multi-index hashing): the 64
    bits are cut into ``max_distance + 1`` bands, and two hashes at most ``max_distance`` bits
    apart are equal on at least one of them (pigeonhole), so only pairs equal on a band are
    compared: the same pairs, without the cost of comparing every pair (100,000 images: 36 s).
    """
    if not len(left) or not len(right):
        return []
    if max_distance >= 16 or len(left) * len(right) <= BRUTE_PAIRS:
        return _brute_pairs(left, right, max_distance)
    found: dict[tuple[int, int], int] = {}
    for shift, mask in _bands(max_distance + 1):
        keys_right = (right >> np.uint64(shift)) & np.uint64(mask)
        for start in range(0, len(left), BAND_CHUNK):
            chunk = left[start : start + BAND_CHUNK]
            keys_left = (chunk >> np.uint64(shift)) & np.uint64(mask)
            li, ri = _band_candidates(keys_left, keys_right, start)
            distance = np.bitwise_count(left[li] ^ right[ri])
            keep = distance <= max_distance
            kept = (li[keep].tolist(), ri[keep].tolist(), distance[keep].tolist())
            for i, j, d in zip(*kept, strict=True):
                found[(i, j)] = int(d)
    return sorted((i, j, d) for (i, j), d in found.items())


def _closest(a: pd.DataFrame, b: pd.DataFrame, max_distance: int) -> dict[tuple[int, int], int]:
    """Smallest distance of every (row of ``a``, row of ``b``) pair within ``max_distance``:
    whole image against whole image, and each whole image against the other's crops."""
    best: dict[tuple[int, int], int] = {}
    whole_a, whole_b = _as_ints(a["phash"], 0), _as_ints(b["phash"], 0)
    comparisons = [(whole_a, whole_b, False)]
    for k in range(1, len(CENTER_CROPS) + 1):
        comparisons += [(whole_a, _as_ints(b["phash"], k), False)]
        comparisons += [(whole_b, _as_ints(a["phash"], k), True)]
    for left, right, swapped in comparisons:
        for i, j, d in hamming_pairs(left, right, max_distance):
            key = (j, i) if swapped else (i, j)
            best[key] = min(d, best.get(key, d))
    return best


def near_pairs(manifest: pd.DataFrame, max_distance: int, splits: tuple[str, ...]) -> pd.DataFrame:
    """Pairs of images in different ``splits`` whose perceptual hashes are at most
    ``max_distance`` apart and whose bytes differ: ``path``, ``split`` (the later split's file),
    ``other``, ``other_split`` and ``distance``, closest first."""
    columns = ["path", "split", "other", "other_split", "distance"]
    if "phash" not in manifest:
        return pd.DataFrame(columns=columns)
    known = manifest[manifest["phash"].notna() & manifest["split"].isin(splits)]
    by_split = {s: known[known["split"] == s].reset_index(drop=True) for s in splits}
    rows = []
    for i, later in enumerate(splits):
        for earlier in splits[:i]:
            a, b = by_split[later], by_split[earlier]
            sha_a, sha_b = a["sha256"].tolist(), b["sha256"].tolist()
            path_a, path_b = a["path"].tolist(), b["path"].tolist()
            for (x, y), d in _closest(a, b, max_distance).items():
                if sha_a[x] == sha_b[y]:
                    continue  # an exact copy: the leakage rule names it
                rows.append((path_a[x], later, path_b[y], earlier, d))
    pairs = pd.DataFrame(rows, columns=columns)
    return pairs.sort_values(["distance", "path", "other"], ignore_index=True)


#: Pairs shown on the thumbnail sheet.
SHEET_PAIRS = 25


def pair_sheet(root: Path, pairs: list[tuple[str, str, int]], out: Path) -> Path | None:
    """A PNG of the first :data:`SHEET_PAIRS` pairs, one row each: the later split's file, its
    partner, and both paths with the distance beside them; ``out``, or None if there is none
    (files that cannot be opened are drawn grey)."""
    rows = [
        SheetRow(images=(path, other), lines=(path, f"~ {other}"), alert=f"{distance} bits apart")
        for path, other, distance in pairs[:SHEET_PAIRS]
    ]
    return draw_sheet(root, rows, out)
