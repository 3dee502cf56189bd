"""Seeded synthetic scenes of circles, squares and triangles, with exact instance masks.

The demo model (see `demo/train_shapes.py`) is trained on these scenes and the semantic
tests post them to the server, so everything here is deterministic for a given seed.

Geometry lives in a *reference frame*: the image as the demo model sees it after its own
resize (torchvision's rule with min_size 240 / max_size 320, so a 320x240 scene is its own
reference frame and a 640x480 scene is a 2x rendering of a 320x240 layout). Object sizes
(20-200 px) are drawn in that frame, so every scene, whatever its pixel size, holds
objects the model was trained to see. `Scene.rendered_at(w, h)` draws the same layout at
another size of the same aspect ratio.

Conventions:
    * images are HxWx3 uint8 RGB;
    * pixel (row i, column j) covers [j, j+1) x [i, i+1); a pixel belongs to a shape when
      its centre (j + 0.5, i + 0.5) is inside it;
    * boxes are float32 (x1, y1, x2, y2) with x2 = last column + 1 (pixel-edge convention,
      the convention of torchvision's detection boxes);
    * masks are the *visible* part of each instance: later shapes occlude earlier ones.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

CLASS_NAMES = ["__background__", "circle", "square", "triangle"]
"""Index 0 is the background, as torchvision's Mask R-CNN expects."""

SHAPE_CLASSES = CLASS_NAMES[1:]

# Seed ranges: the demo model is trained on seeds >= TRAIN_SEED_START only, so any smaller
# seed is a held-out scene. demo/evaluate.py uses EVAL_SEED_START, EVAL_SEED_START + 1, ...
TRAIN_SEED_START = 10_000_000
EVAL_SEED_START = 1_000_000

# The demo model's resize rule (torchvision GeneralizedRCNNTransform min_size/max_size).
REFERENCE_MIN_SIZE = 240
REFERENCE_MAX_SIZE = 320

MIN_OBJECT_SIZE = 20.0
MAX_OBJECT_SIZE = 200.0
MIN_VISIBLE_FRACTION = 0.4
"""Instances whose visible area is below this fraction of their full area are dropped."""
MIN_VISIBLE_AREA = 80.0
"""... and so are instances with fewer visible pixels than this (in reference-frame pixels)."""

_PLACEMENT_VISIBLE_FRACTION = 0.5  # stricter at layout time, so renders at other sizes keep all
_MIN_COLOUR_DISTANCE = 70.0  # RGB Euclidean, between an object and what lies under/around it
_SUPERSAMPLE = 4  # anti-aliased edges in the image; masks stay exact (pixel-centre rule)


@dataclass(frozen=True)
class ShapeSpec:
    """One object, in reference-frame pixels.

    kind: "circle" | "square" | "triangle"; size: circle diameter, square side or
    (equilateral) triangle side; angle: rotation in degrees; colour: RGB 0-255;
    shading: brightness gradient (per reference pixel, along x and y) across the object.
    """

    kind: str
    cx: float
    cy: float
    size: float
    angle: float
    colour: tuple[float, float, float]
    shading: tuple[float, float]

    def vertices(self, scale: float = 1.0) -> np.ndarray | None:
        """Polygon vertices (K, 2) in pixels of a rendering at `scale`; None for a circle."""
        if self.kind == "circle":
            return None
        if self.kind == "square":
            half = self.size / 2.0
            pts = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
        elif self.kind == "triangle":
            r = self.size / math.sqrt(3.0)  # circumradius of an equilateral triangle
            a = np.deg2rad([-90.0, 30.0, 150.0])
            pts = np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
        else:
            raise ValueError(f"unknown shape kind {self.kind!r}")
        t = math.radians(self.angle)
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        return (pts @ rot.T + [self.cx, self.cy]) * scale

    def extent(self) -> tuple[float, float, float, float]:
        """(x1, y1, x2, y2) of the shape itself, in reference pixels."""
        v = self.vertices()
        if v is None:
            r = self.size / 2.0
            return self.cx - r, self.cy - r, self.cx + r, self.cy + r
        return float(v[:, 0].min()), float(v[:, 1].min()), float(v[:, 0].max()), float(v[:, 1].max())

    def inside(self, x: np.ndarray, y: np.ndarray, scale: float) -> np.ndarray:
        """Whether points (pixels of a rendering at `scale`) are inside the shape."""
        if self.kind == "circle":
            r = self.size / 2.0 * scale
            return (x - self.cx * scale) ** 2 + (y - self.cy * scale) ** 2 <= r * r
        v = self.vertices(scale)
        # Convex polygon: inside when on the same side of every edge. Vertices are clockwise
        # in image coordinates (y down) for both the square and the triangle.
        result = np.ones(np.broadcast(x, y).shape, bool)
        for k in range(len(v)):
            (x0, y0), (x1, y1) = v[k], v[(k + 1) % len(v)]
            result &= (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) >= 0
        return result


@dataclass(frozen=True)
class BackgroundSpec:
    """Gradient + texture + noise, resolution independent (reference-frame units)."""

    colour0: tuple[float, float, float]
    colour1: tuple[float, float, float]
    direction: float  # gradient angle, radians
    texture: str  # "blobs" | "stripes" | "lines" | "plain"
    texture_amplitude: float
    texture_seed: int
    stripe_period: float
    stripe_angle: float
    noise_sigma: float
    noise_seed: int


@dataclass(frozen=True)
class SceneLayout:
    """Everything needed to draw a scene at any size of the reference frame's aspect ratio."""

    ref_width: float
    ref_height: float
    background: BackgroundSpec
    shapes: tuple[ShapeSpec, ...]  # in drawing order: later shapes occlude earlier ones


@dataclass
class Scene:
    """A rendered scene and its ground truth.

    image: uint8 (H, W, 3) RGB. masks: bool (N, H, W), the visible part of each instance.
    boxes: float32 (N, 4) (x1, y1, x2, y2), tight around each visible mask, x2 = last
    column + 1. class_ids: int64 (N,), indices into CLASS_NAMES. full_areas: int64 (N,),
    pixel count of each instance before occlusion. layout: what was drawn.
    """

    image: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    class_ids: np.ndarray
    full_areas: np.ndarray
    layout: SceneLayout = field(repr=False)

    @property
    def labels(self) -> list[str]:
        return [CLASS_NAMES[int(c)] for c in self.class_ids]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    def rendered_at(self, width: int, height: int) -> "Scene":
        """The same layout drawn at another size (same aspect ratio, within 2%)."""
        return render_layout(self.layout, width, height)


def reference_scale(width: int, height: int) -> float:
    """Factor from an image of (width, height) to the reference frame (torchvision's rule)."""
    return min(REFERENCE_MIN_SIZE / min(width, height), REFERENCE_MAX_SIZE / max(width, height))


def generate_scene(
    rng_or_seed: int | np.random.Generator, width: int = 320, height: int = 240
) -> Scene:
    """A random scene of 2-6 circles, squares and triangles at (width, height).

    The same seed at sizes of the same aspect ratio gives the same layout, drawn larger or
    smaller (object sizes are 20-200 px in the reference frame, see the module docstring).
    """
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    s = reference_scale(width, height)
    layout = sample_layout(rng, width * s, height * s)
    return render_layout(layout, width, height)


# --------------------------------------------------------------------------- layout


def sample_layout(rng: np.random.Generator, ref_width: float, ref_height: float) -> SceneLayout:
    """Background and shapes in a reference frame of (ref_width, ref_height) pixels."""
    background = _sample_background(rng)
    w, h = int(round(ref_width)), int(round(ref_height))
    canvas = _render_background(background, w, h, 1.0, noise=False)
    n_target = int(rng.integers(2, 7))
    shapes: list[ShapeSpec] = []
    masks: list[np.ndarray] = []  # full masks of the placed shapes, reference resolution
    for _round in range(10):
        for _ in range(n_target - len(shapes)):
            occlude = len(shapes) > 0 and rng.random() < 0.35
            placed = _place_shape(rng, shapes, masks, w, h, occlude)
            if placed is None:
                continue
            shape, mask = placed
            colour = _pick_colour(rng, canvas, mask)
            shape = ShapeSpec(shape.kind, shape.cx, shape.cy, shape.size, shape.angle, colour, shape.shading)
            canvas[mask] = colour
            shapes.append(shape)
            masks.append(mask)
        if len(shapes) >= 2:
            return SceneLayout(float(ref_width), float(ref_height), background, tuple(shapes))
        n_target = 2
    raise RuntimeError("could not place two shapes in the scene")  # never seen; a guard, not a path


def _sample_background(rng: np.random.Generator) -> BackgroundSpec:
    base = rng.uniform(20, 235, 3)
    colour0 = np.clip(base + rng.normal(0, 35, 3), 0, 255)
    colour1 = np.clip(base + rng.normal(0, 35, 3), 0, 255)
    return BackgroundSpec(
        colour0=tuple(float(c) for c in colour0),
        colour1=tuple(float(c) for c in colour1),
        direction=float(rng.uniform(0, 2 * math.pi)),
        texture=str(rng.choice(["blobs", "stripes", "lines", "plain"], p=[0.4, 0.2, 0.25, 0.15])),
        texture_amplitude=float(rng.uniform(6, 28)),
        texture_seed=int(rng.integers(2**31)),
        stripe_period=float(rng.uniform(6, 40)),
        stripe_angle=float(rng.uniform(0, math.pi)),
        noise_sigma=float(rng.uniform(1.0, 7.0)),
        noise_seed=int(rng.integers(2**31)),
    )


def _random_shape(rng: np.random.Generator, w: int, h: int) -> ShapeSpec:
    kind = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
    size = float(math.exp(rng.uniform(math.log(MIN_OBJECT_SIZE), math.log(MAX_OBJECT_SIZE))))
    angle = float(rng.uniform(0, 360)) if kind != "circle" else 0.0
    shading = tuple(float(g) for g in rng.uniform(-0.25, 0.25, 2))
    shape = ShapeSpec(kind, 0.0, 0.0, size, angle, (0.0, 0.0, 0.0), shading)
    # Clamp the size so that the (rotated) shape fits inside the image with a 2 px margin.
    x1, y1, x2, y2 = shape.extent()
    fit = min((w - 4) / (x2 - x1), (h - 4) / (y2 - y1), 1.0)
    shape = ShapeSpec(kind, 0.0, 0.0, size * fit, angle, shape.colour, shading)
    x1, y1, x2, y2 = shape.extent()
    cx = float(rng.uniform(2 - x1, max(w - 2 - x2, 2 - x1)))  # max(): rounding at a tight fit
    cy = float(rng.uniform(2 - y1, max(h - 2 - y2, 2 - y1)))
    return ShapeSpec(kind, cx, cy, shape.size, angle, shape.colour, shading)


def _full_mask(shape: ShapeSpec, w: int, h: int, scale: float = 1.0) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    x1, y1, x2, y2 = (v * scale for v in shape.extent())
    c0, c1 = max(int(math.floor(x1)) - 1, 0), min(int(math.ceil(x2)) + 1, w)
    r0, r1 = max(int(math.floor(y1)) - 1, 0), min(int(math.ceil(y2)) + 1, h)
    if c1 <= c0 or r1 <= r0:
        return mask
    ys, xs = np.mgrid[r0:r1, c0:c1]
    mask[r0:r1, c0:c1] = shape.inside(xs + 0.5, ys + 0.5, scale)
    return mask


def _place_shape(rng, shapes, masks, w, h, occlude):
    """A new shape that leaves every placed shape at least half visible, or None.

    With `occlude` the new shape must overlap an earlier one; otherwise it should keep a
    gap to all of them. That preference is dropped after 30 tries.
    """
    union = np.zeros((h, w), bool)
    for m in masks:
        union |= m
    gap = cv2.dilate(union.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    visible = _visible(masks)
    for attempt in range(60):
        shape = _random_shape(rng, w, h)
        mask = _full_mask(shape, w, h)
        if mask.sum() < MIN_VISIBLE_AREA:
            continue
        if attempt < 30:
            if occlude and not (mask & union).any():
                continue
            if not occlude and (mask & gap).any():
                continue
        ok = all(
            (vis & ~mask).sum() >= max(_PLACEMENT_VISIBLE_FRACTION * full.sum(), 1.5 * MIN_VISIBLE_AREA)
            for vis, full in zip(visible, masks)
        )
        if ok:
            return shape, mask
    return None


def _visible(masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    out = []
    above = np.zeros_like(masks[0]) if masks else None
    for m in reversed(masks):
        out.append(m & ~above)
        above = above | m
    return out[::-1]


def _pick_colour(rng, canvas: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """An RGB colour far from what the shape covers and what surrounds it."""
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    local = canvas[ring].reshape(-1, 3)
    if len(local) > 2000:
        local = local[rng.choice(len(local), 2000, replace=False)]
    best, best_d = None, -1.0
    for _ in range(40):
        colour = rng.uniform(0, 255, 3)
        d = float(np.percentile(np.linalg.norm(local - colour, axis=1), 5))
        if d >= _MIN_COLOUR_DISTANCE:
            return tuple(float(c) for c in colour)
        if d > best_d:
            best, best_d = colour, d
    return tuple(float(c) for c in best)


# --------------------------------------------------------------------------- rendering


def render_layout(layout: SceneLayout, width: int, height: int) -> Scene:
    """Draw `layout` at (width, height); its aspect ratio must match within 2%."""
    sx, sy = width / layout.ref_width, height / layout.ref_height
    if abs(sx / sy - 1.0) > 0.02:
        raise ValueError(
            f"{width}x{height} does not have the aspect ratio of the layout "
            f"({layout.ref_width:.0f}x{layout.ref_height:.0f})"
        )
    scale = math.sqrt(sx * sy)
    image = _render_background(layout.background, width, height, scale, noise=False)
    full_masks = []
    for shape in layout.shapes:
        mask, alpha, box = _rasterise(shape, width, height, scale)
        r0, r1, c0, c1 = box
        if r1 > r0 and c1 > c0:
            ys, xs = np.mgrid[r0:r1, c0:c1]
            gx, gy = shape.shading
            shade = 1.0 + (gx * (xs + 0.5 - shape.cx * scale) + gy * (ys + 0.5 - shape.cy * scale)) / (
                shape.size * scale
            )
            colour = np.clip(np.asarray(shape.colour)[None, None, :] * shade[..., None], 0, 255)
            a = alpha[..., None]
            image[r0:r1, c0:c1] = image[r0:r1, c0:c1] * (1 - a) + colour * a
        full_masks.append(mask)
    noise_rng = np.random.default_rng(layout.background.noise_seed)
    image += noise_rng.normal(0.0, layout.background.noise_sigma, image.shape).astype(np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    visible = _visible(full_masks)
    keep = []
    min_area = MIN_VISIBLE_AREA * scale * scale
    for i, (vis, full) in enumerate(zip(visible, full_masks)):
        area, full_area = int(vis.sum()), int(full.sum())
        if area >= min_area and area >= MIN_VISIBLE_FRACTION * full_area:
            keep.append(i)
    masks = np.stack([visible[i] for i in keep]) if keep else np.zeros((0, height, width), bool)
    return Scene(
        image=image,
        masks=masks,
        boxes=masks_to_boxes(masks),
        class_ids=np.array([CLASS_NAMES.index(layout.shapes[i].kind) for i in keep], np.int64),
        full_areas=np.array([int(full_masks[i].sum()) for i in keep], np.int64),
        layout=layout,
    )


def _rasterise(shape: ShapeSpec, w: int, h: int, scale: float):
    """Exact mask (pixel-centre rule) and anti-aliased coverage within the shape's box."""
    x1, y1, x2, y2 = (v * scale for v in shape.extent())
    c0, c1 = max(int(math.floor(x1)) - 1, 0), min(int(math.ceil(x2)) + 1, w)
    r0, r1 = max(int(math.floor(y1)) - 1, 0), min(int(math.ceil(y2)) + 1, h)
    mask = np.zeros((h, w), bool)
    if c1 <= c0 or r1 <= r0:
        return mask, np.zeros((0, 0), np.float32), (r0, r0, c0, c0)
    ys, xs = np.mgrid[r0:r1, c0:c1].astype(np.float32)
    mask[r0:r1, c0:c1] = shape.inside(xs + 0.5, ys + 0.5, scale)
    offsets = (np.arange(_SUPERSAMPLE, dtype=np.float32) + 0.5) / _SUPERSAMPLE
    alpha = np.zeros(xs.shape, np.float32)
    for oy in offsets:
        for ox in offsets:
            alpha += shape.inside(xs + ox, ys + oy, scale)
    alpha /= _SUPERSAMPLE * _SUPERSAMPLE
    return mask, alpha, (r0, r1, c0, c1)


def _render_background(bg: BackgroundSpec, w: int, h: int, scale: float, noise: bool) -> np.ndarray:
    """Float32 (h, w, 3) background; geometry is in reference pixels times `scale`."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = (xs + 0.5) / scale, (ys + 0.5) / scale
    ref_w, ref_h = w / scale, h / scale
    t = (u - ref_w / 2) * math.cos(bg.direction) + (v - ref_h / 2) * math.sin(bg.direction)
    span = max(abs(ref_w * math.cos(bg.direction)) + abs(ref_h * math.sin(bg.direction)), 1.0)
    t = np.clip(t / span + 0.5, 0.0, 1.0)[..., None]
    image = np.asarray(bg.colour0, np.float32) * (1 - t) + np.asarray(bg.colour1, np.float32) * t
    trng = np.random.default_rng(bg.texture_seed)
    amp = bg.texture_amplitude
    if bg.texture == "blobs":
        # Two octaves of smooth value noise on a grid fixed in reference units.
        for cell, weight in ((40.0, 1.0), (12.0, 0.5)):
            gw, gh = int(math.ceil(ref_w / cell)) + 1, int(math.ceil(ref_h / cell)) + 1
            grid = trng.normal(0, 1, (gh, gw, 3)).astype(np.float32)
            grid[..., 1:] = 0.6 * grid[..., :1] + 0.4 * grid[..., 1:]  # mostly luminance
            up = cv2.resize(grid, (int(round(gw * cell * scale)), int(round(gh * cell * scale))),
                            interpolation=cv2.INTER_CUBIC)
            image += weight * amp * up[:h, :w]
    elif bg.texture == "stripes":
        phase = trng.uniform(0, 2 * math.pi)
        d = u * math.cos(bg.stripe_angle) + v * math.sin(bg.stripe_angle)
        image += (amp * np.sin(2 * math.pi * d / bg.stripe_period + phase))[..., None]
    elif bg.texture == "lines":
        layer = np.zeros((h, w, 3), np.float32)
        for _ in range(int(trng.integers(3, 12))):
            p = trng.uniform([0, 0], [ref_w, ref_h], (2, 2)) * scale
            delta = trng.normal(0, 2.5 * amp, 3)
            thickness = max(1, int(round(trng.uniform(1, 3) * scale)))
            cv2.line(layer, tuple(int(c) for c in p[0]), tuple(int(c) for c in p[1]),
                     tuple(float(c) for c in delta), thickness, cv2.LINE_AA)
        image += layer
    if noise:
        image += np.random.default_rng(bg.noise_seed).normal(0, bg.noise_sigma, image.shape).astype(np.float32)
    return image


# --------------------------------------------------------------------------- ground truth


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight float32 (N, 4) boxes (x1, y1, x2, y2) around bool masks (N, H, W); x2 = last column + 1."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if len(rows):
            boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def coco_categories() -> list[dict]:
    """COCO categories: id = index into CLASS_NAMES (1..3); the background is not a category."""
    return [{"id": i, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASS_NAMES) if i > 0]


def coco_ground_truth(scenes: Iterable[Scene], first_image_id: int = 1) -> dict:
    """COCO-format ground truth (instances, RLE segmentation) for pycocotools' COCOeval.

    Image ids are first_image_id, first_image_id + 1, ... in the order of `scenes`;
    category ids are indices into CLASS_NAMES.
    """
    from pycocotools import mask as mask_utils  # test/eval dependency, not needed to draw scenes

    images, annotations = [], []
    for k, scene in enumerate(scenes):
        image_id = first_image_id + k
        h, w = scene.size
        images.append({"id": image_id, "width": w, "height": h, "file_name": f"scene_{image_id:06d}.png"})
        for mask, box, cid in zip(scene.masks, scene.boxes, scene.class_ids):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(cid),
                "segmentation": rle,
                "area": float(mask.sum()),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "iscrowd": 0,
            })
    return {"images": images, "annotations": annotations, "categories": coco_categories()}


def write_coco_ground_truth(scenes: Iterable[Scene], path: str | Path, first_image_id: int = 1) -> Path:
    """Write `coco_ground_truth(scenes)` as JSON to `path`; returns the path."""
    path = Path(path)
    path.write_text(json.dumps(coco_ground_truth(scenes, first_image_id)))
    return path
