"""Top-down orthographic renderer for clevrer_sim.

Shading makes shape and material visible: spheres get radial (Lambert) shading, cylinders
a flat top with a darker rim, cubes a flat top with lit and shaded bevels that turn with
the cube; metal adds a specular highlight. Edges are antialiased through signed distances,
and instance masks take the object that covers each pixel centre.

The view (x in [-3, 3], y in [-2, 2]) is mapped onto any resolution, so 64x64 is squashed
horizontally exactly as real CLEVRER (480x320) is when resized to 64x64.
"""

from __future__ import annotations

import numpy as np

from .clevrer_sim import COLOR_RGB, VIEW_HALF_H, VIEW_HALF_W, ObjectSpec

TABLE_RGB = np.array([168.0, 168.0, 160.0])
_LIGHT = np.array([-0.45, 0.55, 1.0]) / np.linalg.norm([-0.45, 0.55, 1.0])  # from the upper left
_HALF = (_LIGHT + np.array([0.0, 0.0, 1.0])) / np.linalg.norm(_LIGHT + np.array([0.0, 0.0, 1.0]))


class Renderer:
    """Renders frames and instance masks at a fixed resolution.

    Instance id of object ``o`` in the masks is ``o + 1``; 0 is the table.
    """

    def __init__(self, height: int, width: int, object_size: float):
        if height < 8 or width < 8:
            raise ValueError(f"Renderer: resolution {height}x{width} is too small; use at least 8x8")
        self.h, self.w = height, width
        self.size = object_size
        self.px = 2 * VIEW_HALF_W / width  # world units per pixel, x
        self.py = 2 * VIEW_HALF_H / height
        self.aa = 0.5 * (self.px + self.py)  # antialiasing ramp width
        self.xs = -VIEW_HALF_W + (np.arange(width) + 0.5) * self.px  # pixel-centre world x
        self.ys = VIEW_HALF_H - (np.arange(height) + 0.5) * self.py  # pixel-centre world y
        # a soft light fall-off over the table so the background is not perfectly flat
        gy, gx = np.meshgrid(self.ys, self.xs, indexing="ij")
        fall = 1.0 - 0.06 * ((gx / VIEW_HALF_W) ** 2 + (gy / VIEW_HALF_H) ** 2)
        self.background = (TABLE_RGB[None, None, :] * fall[..., None]).astype(np.float32)  # (H, W, 3)

    def _window(self, x: float, y: float) -> tuple[slice, slice] | None:
        r = self.size * 1.5 + self.aa
        j0 = int(np.floor((x - r + VIEW_HALF_W) / self.px))
        j1 = int(np.ceil((x + r + VIEW_HALF_W) / self.px))
        i0 = int(np.floor((VIEW_HALF_H - (y + r)) / self.py))
        i1 = int(np.ceil((VIEW_HALF_H - (y - r)) / self.py))
        j0, j1, i0, i1 = max(j0, 0), min(j1, self.w), max(i0, 0), min(i1, self.h)
        if j0 >= j1 or i0 >= i1:
            return None
        return slice(i0, i1), slice(j0, j1)

    def render(self, objects: tuple[ObjectSpec, ...], states: np.ndarray, present: np.ndarray):
        """Render a video.

        objects: the scene's objects, index = object id
        states:  (T, O, F) with x, y, vx, vy, angle, angular velocity
        present: (T, O) bool
        returns frames (T, H, W, 3) uint8 and masks (T, H, W) uint8
        """
        T = states.shape[0]
        frames = np.empty((T, self.h, self.w, 3), np.uint8)
        masks = np.zeros((T, self.h, self.w), np.uint8)
        for t in range(T):
            img = self.background.copy()  # (H, W, 3)
            for o in objects:
                if not present[t, o.object_id]:
                    continue
                x, y, _, _, angle, _ = states[t, o.object_id]
                win = self._window(float(x), float(y))
                if win is None:
                    continue
                si, sj = win
                dx = self.xs[sj][None, :] - x  # (h, w)
                dy = self.ys[si][:, None] - y
                sdf, rgb = self._shade(o, dx, dy, float(angle))
                alpha = np.clip(0.5 - sdf / self.aa, 0.0, 1.0)[..., None]
                img[si, sj] = img[si, sj] * (1 - alpha) + rgb * alpha
                m = masks[t, si, sj]
                m[sdf < 0] = o.object_id + 1
            frames[t] = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        return frames, masks

    def _shade(self, o: ObjectSpec, dx: np.ndarray, dy: np.ndarray, angle: float):
        """Signed distance (world units, < 0 inside) and RGB (h, w, 3) of one object."""
        s = self.size
        base = np.asarray(COLOR_RGB[o.color], np.float32)
        metal = o.material == "metal"
        if o.shape == "cube":
            c, sn = np.cos(angle), np.sin(angle)
            u = c * dx + sn * dy  # cube-local coordinates
            v = -sn * dx + c * dy
            sdf = np.maximum(np.abs(u), np.abs(v)) - s
            # bevel: the outer band of the top face is lit or shaded by which way it faces
            edge = np.maximum(np.abs(u), np.abs(v)) > 0.78 * s
            along_u = np.abs(u) >= np.abs(v)
            nu = np.where(along_u, np.sign(u), 0.0)
            nv = np.where(along_u, 0.0, np.sign(v))
            nx, ny = c * nu - sn * nv, sn * nu + c * nv  # bevel normal in world xy
            lit = 0.82 + np.where(edge, 0.45 * (nx * _LIGHT[0] + ny * _LIGHT[1]), 0.0)
            shade = lit[..., None] * base
            if metal:
                g = np.clip(0.5 + 0.5 * (-dx + dy) / (2 * s), 0, 1)  # sheen across the face
                shade = shade * (0.7 + 0.3 * g[..., None]) + (90.0 * g**4)[..., None]
            return sdf, shade
        r = np.sqrt(dx * dx + dy * dy)
        sdf = r - s
        if o.shape == "sphere":
            nx, ny = dx / s, dy / s
            nz = np.sqrt(np.clip(1.0 - nx * nx - ny * ny, 0.0, 1.0))
            diffuse = np.clip(nx * _LIGHT[0] + ny * _LIGHT[1] + nz * _LIGHT[2], 0.0, 1.0)
            shade = (0.3 + 0.75 * diffuse)[..., None] * base
            if metal:
                spec = np.clip(nx * _HALF[0] + ny * _HALF[1] + nz * _HALF[2], 0.0, 1.0) ** 40
                shade = shade * 0.8 + (255.0 * spec)[..., None]
            return sdf, shade
        # cylinder: flat top face and a darker rim
        rim = r > 0.72 * s
        lit = np.where(rim, 0.55 + 0.25 * (dx * _LIGHT[0] + dy * _LIGHT[1]) / s, 0.9)
        shade = lit[..., None] * base
        if metal:
            g = np.clip(0.5 + 0.5 * (-dx + dy) / (2 * s), 0, 1)
            shade = shade + np.where(rim, 0.0, 110.0 * g**6)[..., None]
        return sdf, shade
