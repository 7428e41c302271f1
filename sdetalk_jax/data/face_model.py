"""A procedural face mask with viseme and expression blendshapes, for the synthetic corpus.

The mask is a patch of an ellipsoid on a (longitude theta, latitude phi) grid, facing +z, centred
on the head's centre so that head rotations (Eq. 4) turn about it. Units are metres. Blendshapes are
smooth displacement fields defined in the grid coordinates, so every subject shares them while the
templates differ in shape.
"""

from __future__ import annotations

import dataclasses

import numpy as np

THETA_RANGE = (-1.6, 1.6)  # left to right, radians
PHI_RANGE = (1.15, -1.0)  # top (forehead) to bottom (chin and neck), radians
MOUTH_PHI = -0.45
BROW_PHI = 0.45
EYE_PHI = 0.25

VISEME_SHAPES = ("jaw_open", "lip_round", "lip_spread", "lip_close")
EXPRESSION_SHAPES = (
    "smile",
    "frown",
    "brow_raise",
    "brow_lower",
    "inner_brow_raise",
    "eye_widen",
    "squint",
    "lip_press",
    "nose_wrinkle",
    "jaw_drop",
)


@dataclasses.dataclass(frozen=True)
class FaceTopology:
    theta: np.ndarray  # [V]
    phi: np.ndarray  # [V]
    faces: np.ndarray  # [F, 3] int32 triangles
    lip_vertices: np.ndarray  # indices
    upper_face_vertices: np.ndarray  # indices
    upper_lip_vertex: int  # mid-line vertices just above and below the mouth line
    lower_lip_vertex: int

    @property
    def num_vertices(self) -> int:
        return self.theta.shape[0]


def _grid_shape(num_vertices: int) -> tuple[int, int]:
    # Columns span a wider angle than rows: aim for square cells.
    aspect = (THETA_RANGE[1] - THETA_RANGE[0]) / (PHI_RANGE[0] - PHI_RANGE[1])
    cols = max(4, int(round(np.sqrt(num_vertices * aspect))))
    rows = int(np.ceil(num_vertices / cols))
    return rows, cols


def build_topology(num_vertices: int) -> FaceTopology:
    """A grid of exactly `num_vertices` vertices; the last row is cut short (at the neck) to fit."""
    if num_vertices < 64:
        raise ValueError(f"need at least 64 vertices for a face, got {num_vertices}")
    rows, cols = _grid_shape(num_vertices)
    phi_grid = np.linspace(*PHI_RANGE, rows)
    theta_grid = np.linspace(*THETA_RANGE, cols)
    phi, theta = (
        a.reshape(-1)[:num_vertices] for a in np.meshgrid(phi_grid, theta_grid, indexing="ij")
    )
    index = np.arange(rows * cols).reshape(rows, cols)
    a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, :-1], index[1:, 1:]
    triangles = np.concatenate(
        [np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)]
    )
    triangles = triangles[np.all(triangles < num_vertices, axis=1)].astype(np.int32)
    lips = np.nonzero((theta / 0.45) ** 2 + ((phi - MOUTH_PHI) / 0.2) ** 2 < 1)[0]
    upper = np.nonzero((phi > EYE_PHI - 0.12) & (np.abs(theta) < 0.9))[0]
    centre = np.abs(theta) == np.abs(theta).min()
    above = np.where(centre & (phi > MOUTH_PHI), phi, np.inf)
    below = np.where(centre & (phi < MOUTH_PHI), phi, -np.inf)
    return FaceTopology(
        theta=theta,
        phi=phi,
        faces=triangles,
        lip_vertices=lips,
        upper_face_vertices=upper,
        upper_lip_vertex=int(np.argmin(above)),
        lower_lip_vertex=int(np.argmax(below)),
    )


def _bump(theta, phi, theta0, phi0, width_theta, width_phi):
    return np.exp(-(((theta - theta0) / width_theta) ** 2 + ((phi - phi0) / width_phi) ** 2))


def _mirrored_bump(theta, phi, theta0, phi0, width_theta, width_phi):
    """A bump at +theta0 and its mirror at -theta0."""
    return _bump(np.abs(theta), phi, theta0, phi0, width_theta, width_phi)


def template_shape(topology: FaceTopology, rng: np.random.Generator) -> np.ndarray:
    """A subject's neutral face [V, 3]: ellipsoid radii, nose, chin and random shape bumps."""
    theta, phi = topology.theta, topology.phi
    radii = np.array([0.075, 0.1, 0.09]) * (1 + 0.06 * rng.standard_normal(3))
    radius = 1.0 + 0.2 * _bump(theta, phi, 0, 0.02, 0.12, 0.28)  # nose
    radius += 0.06 * _bump(theta, phi, 0, -0.8, 0.35, 0.15)  # chin
    for _ in range(4):  # low-frequency individuality
        centre_theta, centre_phi = rng.uniform(-1, 1), rng.uniform(-0.8, 1.0)
        radius += (
            0.03 * rng.standard_normal() * _bump(theta, phi, centre_theta, centre_phi, 0.5, 0.5)
        )
    x = radii[0] * radius * np.sin(theta) * np.cos(phi)
    y = radii[1] * radius * np.sin(phi)
    z = radii[2] * radius * np.cos(theta) * np.cos(phi)
    return np.stack([x, y, z], axis=-1).astype(np.float32)


def blendshapes(topology: FaceTopology) -> dict[str, np.ndarray]:
    """Unit displacement fields [V, 3] (metres at weight 1) for visemes and expressions."""
    theta, phi = topology.theta, topology.phi
    side = np.sign(theta)
    zero = np.zeros_like(theta)
    lips = _bump(theta, phi, 0, MOUTH_PHI, 0.35, 0.12)
    below_mouth = 1 / (1 + np.exp(-(MOUTH_PHI - 0.02 - phi) / 0.03))
    jaw = below_mouth * np.exp(-((theta / 0.9) ** 2)) * (phi > -0.98)
    upper_lip = _bump(theta, phi, 0, MOUTH_PHI + 0.06, 0.35, 0.05)
    corners = _mirrored_bump(theta, phi, 0.32, MOUTH_PHI, 0.15, 0.12)
    cheeks = _mirrored_bump(theta, phi, 0.45, MOUTH_PHI + 0.3, 0.2, 0.15)
    brows = _bump(theta, phi, 0, BROW_PHI, 0.6, 0.12)
    inner_brows = _mirrored_bump(theta, phi, 0.15, BROW_PHI, 0.15, 0.1)
    upper_lids = _mirrored_bump(theta, phi, 0.3, EYE_PHI + 0.05, 0.12, 0.06)
    lower_lids = _mirrored_bump(theta, phi, 0.3, EYE_PHI - 0.05, 0.12, 0.06)
    nose = _bump(theta, phi, 0, 0.08, 0.12, 0.1)
    lip_sign = np.sign(phi - MOUTH_PHI)

    def field(x, y, z):
        return np.stack([x + zero, y + zero, z + zero], axis=-1).astype(np.float32)

    jaw_open = field(0, -0.012 * jaw + 0.002 * upper_lip, -0.003 * jaw)
    shapes = {
        "jaw_open": jaw_open,
        "lip_round": field(-0.008 * theta / 0.35 * lips, 0, 0.006 * lips),
        "lip_spread": field(0.008 * theta / 0.35 * lips, 0, -0.002 * lips),
        "lip_close": field(0, -0.004 * lip_sign * lips, 0),
        "smile": field(0.004 * side * corners, 0.006 * corners + 0.003 * cheeks, 0.002 * cheeks),
        "frown": field(0, -0.006 * corners, 0),
        "brow_raise": field(0, 0.006 * brows, 0),
        "brow_lower": field(-0.002 * side * brows, -0.005 * brows, 0.001 * brows),
        "inner_brow_raise": field(0, 0.006 * inner_brows, 0),
        "eye_widen": field(0, 0.003 * upper_lids - 0.002 * lower_lids, 0),
        "squint": field(0, -0.002 * upper_lids + 0.002 * lower_lids, 0),
        "lip_press": field(0, -0.0025 * lip_sign * lips, -0.002 * lips),
        "nose_wrinkle": field(0, 0.003 * nose, -0.001 * nose),
        "jaw_drop": 0.6 * jaw_open,
    }
    return shapes


def rotation_matrices(pitch: np.ndarray, yaw: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """[T, 3, 3] matrices R for row vectors, `posed = vertices @ R` (Eq. 4's f^e * R).

    R is the transpose of the column-vector rotation Rz(roll) Ry(yaw) Rx(pitch).
    """
    cp, sp, cy, sy, cr, sr = (
        np.cos(pitch),
        np.sin(pitch),
        np.cos(yaw),
        np.sin(yaw),
        np.cos(roll),
        np.sin(roll),
    )
    one, zero = np.ones_like(pitch), np.zeros_like(pitch)
    rx = np.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).reshape(-1, 3, 3)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(-1, 3, 3)
    rz = np.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(-1, 3, 3)
    return np.transpose(rz @ ry @ rx, (0, 2, 1)).astype(np.float32)


def vertex_colors(topology: FaceTopology) -> np.ndarray:
    """[V, 3] RGB in [0, 1]: skin, with lips, eyes and brows marked so frames are readable."""
    theta, phi = topology.theta, topology.phi
    skin = np.array([0.87, 0.72, 0.62])
    colors = np.tile(skin, (theta.shape[0], 1))

    def paint(weight, color):
        nonlocal colors
        weight = np.clip(weight, 0, 1)[:, None]
        colors = colors * (1 - weight) + np.array(color)[None] * weight

    lip_band = np.exp(-((theta / 0.3) ** 4)) * np.exp(-(((phi - MOUTH_PHI) / 0.07) ** 2))
    paint(1.6 * lip_band, (0.72, 0.3, 0.3))
    paint(1.4 * _mirrored_bump(theta, phi, 0.3, EYE_PHI, 0.1, 0.045), (0.15, 0.12, 0.12))
    paint(1.2 * _mirrored_bump(theta, phi, 0.3, BROW_PHI, 0.16, 0.03), (0.35, 0.22, 0.15))
    return colors
