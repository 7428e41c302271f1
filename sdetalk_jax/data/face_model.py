"""A procedural head with a mouth that opens, eyes that blink, and viseme and expression
blendshapes, for the synthetic corpus (SynthBIWI format 4).

The skin is an ellipsoid-based surface on a (longitude theta, latitude phi) grid, facing +z and
centred on the head's centre so that head rotations (Eq. 4) turn about it. Along the mouth line
and each eye's line the grid is cut open: the vertices inside a cut are doubled, one copy for the
triangles above it (upper lip, upper lid) and one for those below (lower lip, lower lid), so that
the lips and lids part. Behind the mouth lie the upper teeth and palate, the lower teeth and the
floor of the mouth (which follow the jaw) and a dark throat; behind each eye an eyeball. Units are metres. Blendshapes are displacement fields defined on
a reference head, so every subject shares them while the templates differ in shape.

Vertex order: the skin grid row by row (its last row cut short at the neck, so that the count is
exact), then the lower copies of the mouth cut, those of the eye cuts, the two eyeballs, the mouth
mouth's inside (upper, lower, throat).
"""

from __future__ import annotations

import dataclasses

import numpy as np

THETA_RANGE = (-1.6, 1.6)  # left to right, radians
PHI_RANGE = (1.15, -1.0)  # top (forehead) to bottom (chin and neck), radians
MOUTH_PHI = -0.45
BROW_PHI = 0.45
EYE_PHI = 0.25
MOUTH_HALF_WIDTH = 0.34  # radians of theta: about 25 mm either side of the mid-line
EYE_THETA = 0.3
EYE_HALF_WIDTH = 0.14
RADII = np.array([0.075, 0.1, 0.09])  # the reference head's ellipsoid, metres
EYEBALL_RADIUS = 0.012
EYE_OPENING = (0.005, 0.003)  # how far the upper and lower lids stand off the eye's line, metres
JAW_PIVOT = np.array([0.0, 0.0, -0.01])  # the jaw turns about the x axis through this point
JAW_ANGLE = 0.15  # radians at jaw_open = 1: about 14 mm at the lower lip
# eye_widen and squint at weight 1 open and close the lids by these fractions of their opening
EYE_WIDEN_OPENING, SQUINT_CLOSING = 0.5, 0.5

# `FaceTopology.part`: the skin, the eyeballs, and the mouth's inside: the upper teeth and the
# palate, the lower teeth and the floor of the mouth, the throat behind them
SKIN, EYEBALL, UPPER_MOUTH, LOWER_MOUTH, THROAT = range(5)
MOUTH_INSIDE = (UPPER_MOUTH, LOWER_MOUTH, THROAT)

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
    theta: np.ndarray  # [V] the grid coordinates (inside the mouth: where it lies behind the skin)
    phi: np.ndarray  # [V]
    part: np.ndarray  # [V] SKIN, EYEBALL, UPPER_MOUTH, LOWER_MOUTH or THROAT
    # [V] +1 on the upper lip's side of the mouth cut (and above it), -1 on the lower lip's side
    # (and below it), 0 on the mouth line outside the cut; the same for the eyes' cuts
    mouth_side: np.ndarray
    eye_side: np.ndarray
    faces: np.ndarray  # [F, 3] int32 triangles, wound outwards (towards the viewer in the mouth)
    lip_vertices: np.ndarray  # indices
    upper_face_vertices: np.ndarray  # indices
    upper_lip_vertex: int  # the mid-line vertices of the upper and the lower lip, one on the other
    lower_lip_vertex: int  # when the mouth is closed
    eyeball_direction: np.ndarray  # [V, 3] a vertex's unit direction from its eyeball's centre
    # (the gaze is +z); 0 off the eyeballs
    # [V, 2] inside the mouth: across it (u in [-1, 1]) and from the teeth's edge inwards (v in
    # [0, 1]; the throat's v in [-1, 1]); 0 elsewhere
    mouth_uv: np.ndarray

    @property
    def num_vertices(self) -> int:
        return self.theta.shape[0]


# ---------------------------------------------------------------------------------------------
# Topology


def _grid_rows(rows: int) -> np.ndarray:
    """Latitudes of the grid's rows, top to bottom, with a row exactly on the eyes' and the
    mouth's line."""
    phi = np.linspace(*PHI_RANGE, rows)
    for line in (EYE_PHI, MOUTH_PHI):
        phi[np.argmin(np.abs(phi - line))] = line
    return phi


def _cut_columns(theta_grid: np.ndarray, centre: float, half_width: float) -> np.ndarray:
    return np.nonzero(np.abs(theta_grid - centre) < half_width)[0]


def _grid_triangles(index: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Two triangles a quad of the grid `index` [rows, cols] (-1: no vertex). A quad's top corners
    are read from `lower`, which holds a cut row's lower copies in place of its vertices, so that
    the quads below a cut hang from its lower copies and those above it from its originals."""
    top_left, top_right = lower[:-1, :-1], lower[:-1, 1:]
    bottom_left, bottom_right = index[1:, :-1], index[1:, 1:]
    triangles = np.concatenate(
        [
            np.stack([top_left, bottom_left, top_right], -1).reshape(-1, 3),
            np.stack([top_right, bottom_left, bottom_right], -1).reshape(-1, 3),
        ]
    )
    return triangles[np.all(triangles >= 0, axis=1)]


def _eyeball_mesh(segments: int, rings: int) -> tuple[np.ndarray, np.ndarray]:
    """(directions from the centre [K, 3], triangles) of an eyeball's front 110 degrees: a pole
    at +z (the gaze) and `rings` rings of `segments` vertices, denser near the pole."""
    polar = np.radians(110) * (np.arange(1, rings + 1) / rings) ** 1.3
    azimuth = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    p, a = np.meshgrid(polar, azimuth, indexing="ij")
    ring_directions = np.stack([np.sin(p) * np.cos(a), np.sin(p) * np.sin(a), np.cos(p)], -1)
    directions = np.concatenate([[[0.0, 0.0, 1.0]], ring_directions.reshape(-1, 3)])
    ring = 1 + np.arange(rings * segments).reshape(rings, segments)
    following = np.roll(ring, -1, axis=1)
    triangles = [
        np.stack([np.zeros(segments, int), ring[0], following[0]], -1),
        np.stack([ring[:-1], ring[1:], following[1:]], -1).reshape(-1, 3),
        np.stack([ring[:-1], following[1:], following[:-1]], -1).reshape(-1, 3),
    ]
    return directions, np.concatenate(triangles)


def _cut_sides(phi, line: float, cut: np.ndarray, copies: np.ndarray, near) -> np.ndarray:
    """+1 above `line` and on its cut's originals, -1 below it and on the cut's lower copies,
    0 on the line outside the cut, within `near` (a mask); 0 elsewhere."""
    side = np.sign(phi - line)
    side[cut], side[copies] = 1, -1
    return np.where(near, side, 0.0)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """The sizes of a head of a given vertex count."""

    theta_grid: np.ndarray  # the skin grid's columns
    phi_grid: np.ndarray  # and rows
    grid_count: int  # its vertices, the last row cut short at the neck
    cut_columns: tuple  # the columns of the mouth's cut, then of each eye's
    eye_segments: int
    eye_rings: int
    inside_cols: int
    inside_rows: int

    @property
    def eyeball_size(self) -> int:
        return 1 + self.eye_segments * self.eye_rings


def _layout(num_vertices: int) -> _Layout:
    """Sizes that give exactly `num_vertices`: the parts beside the skin grow with its width,
    and the grid's last row takes what is left."""
    aspect = (THETA_RANGE[1] - THETA_RANGE[0]) / (PHI_RANGE[0] - PHI_RANGE[1])
    cols = max(9, int(round(np.sqrt(0.85 * num_vertices * aspect))))
    theta_grid = np.linspace(*THETA_RANGE, cols)
    cut_columns = (_cut_columns(theta_grid, 0.0, MOUTH_HALF_WIDTH),) + tuple(
        _cut_columns(theta_grid, side * EYE_THETA, EYE_HALF_WIDTH) for side in (-1, 1)
    )
    segments = max(4, cols // 5)
    layout = dict(
        cut_columns=cut_columns, eye_segments=segments, eye_rings=max(2, segments // 3),
        inside_cols=max(3, cols // 5), inside_rows=max(2, cols // 10),
    )  # fmt: skip
    others = sum(map(len, cut_columns)) + 3 * layout["inside_cols"] * layout["inside_rows"]
    others += 2 * (1 + segments * layout["eye_rings"])
    grid_count = num_vertices - others
    phi_grid = _grid_rows(max(1, int(np.ceil(grid_count / cols))))
    return _Layout(theta_grid=theta_grid, phi_grid=phi_grid, grid_count=grid_count, **layout)


def _skin(layout: _Layout) -> tuple[dict, tuple[int, int]]:
    """(the skin's piece, its (upper lip, lower lip) mid-line vertices): the grid, cut open along
    the mouth's and the eyes' lines. A piece holds per-vertex arrays and its `faces`."""
    rows, cols, count = len(layout.phi_grid), len(layout.theta_grid), layout.grid_count
    mouth_row = int(np.argmin(np.abs(layout.phi_grid - MOUTH_PHI)))
    eye_row = int(np.argmin(np.abs(layout.phi_grid - EYE_PHI)))
    if not 0 < eye_row < mouth_row < rows - 1 or min(map(len, layout.cut_columns)) == 0:
        raise ValueError(f"{count} vertices of skin are too few for a face with a mouth and eyes")
    index = np.arange(rows * cols).reshape(rows, cols)
    index[index >= count] = -1
    phi_all, theta_all = np.meshgrid(layout.phi_grid, layout.theta_grid, indexing="ij")
    theta, phi = theta_all.reshape(-1)[:count], phi_all.reshape(-1)[:count]
    lower = index.copy()
    cuts = []  # (originals, lower copies) of the mouth's cut, then the eyes'
    for row, columns in zip((mouth_row, eye_row, eye_row), layout.cut_columns, strict=True):
        first = count + sum(len(c) for c, _ in cuts)
        lower[row, columns] = first + np.arange(len(columns))
        cuts.append((index[row, columns], lower[row, columns]))
    originals = np.concatenate([o for o, _ in cuts])
    theta, phi = np.concatenate([theta, theta[originals]]), np.concatenate([phi, phi[originals]])
    near_eye = np.abs(np.abs(theta) - EYE_THETA) < 2 * EYE_HALF_WIDTH
    eye_cut, eye_copies = (np.concatenate([cuts[1][k], cuts[2][k]]) for k in (0, 1))
    middle = int(np.argmin(np.abs(layout.theta_grid[layout.cut_columns[0]])))
    piece = dict(
        theta=theta, phi=phi, part=np.full(len(theta), SKIN),
        mouth_side=_cut_sides(phi, MOUTH_PHI, *cuts[0], near=np.ones_like(phi, bool)),
        eye_side=_cut_sides(phi, EYE_PHI, eye_cut, eye_copies, near=near_eye),
        faces=_grid_triangles(index, lower),
    )  # fmt: skip
    return piece, (int(cuts[0][0][middle]), int(cuts[0][1][middle]))


def _eyeball(layout: _Layout, side: int) -> dict:
    """The piece of the eyeball of `side`; its place is set with the template."""
    directions, faces = _eyeball_mesh(layout.eye_segments, layout.eye_rings)
    count = len(directions)
    return dict(
        theta=np.full(count, side * EYE_THETA), phi=np.full(count, EYE_PHI),
        part=np.full(count, EYEBALL), eyeball_direction=directions, faces=faces,
    )  # fmt: skip


def _mouth_inside(layout: _Layout) -> dict:
    """The piece of the mouth's inside: three grids across it, the upper teeth and palate from
    2 mm below the mouth's line up, the lower teeth and floor from it down, the throat behind."""
    u_grid, v_grid = np.linspace(-1, 1, layout.inside_cols), np.linspace(0, 1, layout.inside_rows)
    v, u = (a.reshape(-1) for a in np.meshgrid(v_grid, u_grid, indexing="ij"))
    size = len(u)
    local = np.arange(size).reshape(len(v_grid), len(u_grid))
    faces = np.concatenate([_grid_triangles(local + k * size, local + k * size) for k in range(3)])
    phi = np.concatenate(
        [MOUTH_PHI - 0.02 + 0.14 * v, MOUTH_PHI + 0.005 - 0.14 * v, MOUTH_PHI + 0.15 - 0.45 * v]
    )
    return dict(
        theta=np.tile(1.2 * MOUTH_HALF_WIDTH * u, 3), phi=phi,
        part=np.repeat([UPPER_MOUTH, LOWER_MOUTH, THROAT], size),
        mouth_side=np.repeat([1.0, -1.0, 0.0], size),
        mouth_uv=np.concatenate([np.stack([u, v], -1)] * 2 + [np.stack([u, 2 * v - 1], -1)]),
        faces=faces,
    )  # fmt: skip


_PER_VERTEX = {"mouth_side": (), "eye_side": (), "eyeball_direction": (3,), "mouth_uv": (2,)}


def _joined(pieces: list[dict]) -> dict:
    """The pieces' per-vertex arrays one after the other (zeros where a piece has none), their
    faces renumbered."""
    joined, faces, start = {}, [], 0
    for piece in pieces:
        count = len(piece["theta"])
        for name, shape in {"theta": (), "phi": (), "part": (), **_PER_VERTEX}.items():
            joined.setdefault(name, []).append(piece.get(name, np.zeros((count, *shape))))
        faces.append(piece["faces"] + start)
        start += count
    return {
        **{name: np.concatenate(arrays) for name, arrays in joined.items()},
        "faces": np.concatenate(faces).astype(np.int32),
    }


def build_topology(num_vertices: int) -> FaceTopology:
    """A head of exactly `num_vertices` vertices."""
    if num_vertices < 120:
        raise ValueError(f"need at least 120 vertices for a face, got {num_vertices}")
    layout = _layout(num_vertices)
    skin, (upper_lip, lower_lip) = _skin(layout)
    head = _joined([skin, _eyeball(layout, -1), _eyeball(layout, 1), _mouth_inside(layout)])
    assert len(head["theta"]) == num_vertices, (len(head["theta"]), num_vertices)
    theta, phi, on_skin = head["theta"], head["phi"], head["part"] == SKIN
    lips = on_skin & ((theta / (1.1 * MOUTH_HALF_WIDTH)) ** 2 + ((phi - MOUTH_PHI) / 0.2) ** 2 < 1)
    upper_face = on_skin & (phi > EYE_PHI - 0.12) & (np.abs(theta) < 0.9)
    topology = FaceTopology(
        **head, lip_vertices=np.nonzero(lips)[0], upper_face_vertices=np.nonzero(upper_face)[0],
        upper_lip_vertex=upper_lip, lower_lip_vertex=lower_lip,
    )  # fmt: skip
    return dataclasses.replace(topology, faces=_wound_outwards(topology))


def cut_edges(topology: FaceTopology, cut: str) -> tuple[np.ndarray, np.ndarray]:
    """(upper, lower) [K] the vertices of the `"mouth"`'s or the `"eyes"`' cut along its two
    edges, column by column: each upper lip (lid) vertex and the lower one it meets when shut."""
    side, line = {"mouth": (topology.mouth_side, MOUTH_PHI), "eyes": (topology.eye_side, EYE_PHI)}[
        cut
    ]
    on_line = np.nonzero((side != 0) & (topology.phi == line) & (topology.part == SKIN))[0]
    upper, lower = on_line[side[on_line] > 0], on_line[side[on_line] < 0]
    return upper[np.argsort(topology.theta[upper])], lower[np.argsort(topology.theta[lower])]


def _wound_outwards(topology: FaceTopology) -> np.ndarray:
    """The triangles, each wound so that its normal points away from the head's (or its
    eyeball's) centre, and towards the viewer inside the mouth, on the reference head."""
    vertices = reference_shape(topology)
    faces = topology.faces
    corners = vertices[faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    outward = corners.mean(1)
    part = topology.part[faces[:, 0]]
    for side in (-1, 1):
        on_eye = (part == EYEBALL) & (np.sign(topology.theta[faces[:, 0]]) == side)
        outward[on_eye] -= eyeball_centre(topology, vertices, side)
    outward[np.isin(part, MOUTH_INSIDE)] = (0.0, 0.0, 1.0)
    flip = np.einsum("fi,fi->f", normals, outward) < 0
    faces = faces.copy()
    faces[flip] = faces[flip][:, [0, 2, 1]]
    return faces


# ---------------------------------------------------------------------------------------------
# Shapes


def _bump(theta, phi, theta0, phi0, width_theta, width_phi):
    return np.exp(-(((theta - theta0) / width_theta) ** 2 + ((phi - phi0) / width_phi) ** 2))


def _mirrored_bump(theta, phi, theta0, phi0, width_theta, width_phi):
    """A bump at +theta0 and its mirror at -theta0."""
    return _bump(np.abs(theta), phi, theta0, phi0, width_theta, width_phi)


def _relief(theta, phi) -> np.ndarray:
    """The face's relief, as a factor on the ellipsoid's radius: nose, brow ridge, eye sockets,
    cheekbones, lips and chin."""
    radius = 1.0 + 0.2 * _bump(theta, phi, 0, 0.02, 0.12, 0.28)  # nose
    radius += 0.05 * _bump(theta, phi, 0, -0.12, 0.2, 0.08)  # its tip and wings
    radius += 0.035 * _bump(theta, phi, 0, BROW_PHI + 0.05, 0.7, 0.1)  # brow ridge
    radius -= 0.03 * _mirrored_bump(theta, phi, EYE_THETA, EYE_PHI, 0.15, 0.1)  # eye sockets
    radius += 0.03 * _mirrored_bump(theta, phi, 0.55, EYE_PHI - 0.25, 0.2, 0.12)  # cheekbones
    radius += 0.04 * _bump(theta, phi, 0, MOUTH_PHI, 0.35, 0.1)  # lips
    radius -= 0.015 * _bump(theta, phi, 0, MOUTH_PHI - 0.16, 0.25, 0.05)  # below the lower lip
    radius += 0.06 * _bump(theta, phi, 0, -0.8, 0.35, 0.15)  # chin
    return radius


def _ellipsoid(theta, phi, radii, radius) -> np.ndarray:
    x = radii[0] * radius * np.sin(theta) * np.cos(phi)
    y = radii[1] * radius * np.sin(phi)
    z = radii[2] * radius * np.cos(theta) * np.cos(phi)
    return np.stack([x, y, z], axis=-1)


def eye_opening(topology: FaceTopology) -> np.ndarray:
    """[V, 3]: the lids' stand-off from the eye's line in an open eye (metres); a blink is its
    negative. Largest at the eye's middle, none at its corners, fading over the lids."""
    theta, phi = topology.theta, topology.phi
    along = 1 - ((np.abs(theta) - EYE_THETA) / (1.15 * EYE_HALF_WIDTH)) ** 2
    profile = np.sqrt(np.clip(along, 0, 1)) * np.exp(-(((phi - EYE_PHI) / 0.09) ** 2))
    lift = np.where(topology.eye_side > 0, EYE_OPENING[0], -EYE_OPENING[1])
    y = lift * profile * (topology.eye_side != 0) * (topology.part == SKIN)
    return np.stack([0 * y, y, 0 * y], -1)


def eyeball_centre(topology: FaceTopology, skin: np.ndarray, side: int) -> np.ndarray:
    """Where the eyeball of `side` sits: behind the middle of its eye's line, its front 1 mm
    behind the closed lids."""
    on_line = (topology.part == SKIN) & (topology.phi == EYE_PHI) & (topology.eye_side != 0)
    on_line &= np.sign(topology.theta) == side
    middle = np.nonzero(on_line)[0][np.argmin(np.abs(np.abs(topology.theta[on_line]) - EYE_THETA))]
    return skin[middle] - np.array([0.0, 0.0, EYEBALL_RADIUS + 0.001])


def _place_inner_parts(topology: FaceTopology, vertices: np.ndarray) -> np.ndarray:
    """The eyeballs and the mouth's inside placed in a head whose skin is `vertices` [V, 3] (the other
    rows are overwritten)."""
    vertices = vertices.copy()
    eyeballs = np.nonzero(topology.part == EYEBALL)[0]
    for side, block in zip((-1, 1), np.split(eyeballs, 2), strict=True):
        centre = eyeball_centre(topology, vertices, side)
        vertices[block] = centre + EYEBALL_RADIUS * topology.eyeball_direction[block]
    # Each part of the mouth's inside lies behind the skin's point at its (theta, phi), by a depth that
    # curves back at the sides as a dental arch does: the lower teeth behind the upper ones (an
    # overbite, so that they never meet in one plane), the palate and the floor deeper, the
    # throat deepest.
    inside = np.isin(topology.part, MOUTH_INSIDE)
    u, v = topology.mouth_uv[inside].T
    arch = 0.008 * u**2
    teeth = v < 0.4
    depth = np.select(
        [topology.part[inside] == UPPER_MOUTH, topology.part[inside] == LOWER_MOUTH],
        [np.where(teeth, 0.005, 0.009) + arch, np.where(teeth, 0.0065, 0.01) + arch],
        0.02 + arch,
    )
    vertices[inside, 2] -= depth  # straight back from the skin's points at their (theta, phi)
    return vertices


def reference_shape(topology: FaceTopology) -> np.ndarray:
    """The reference head [V, 3]: the mean radii, no individuality, eyes open."""
    return _head(topology, RADII, np.zeros_like(topology.theta))


def _head(topology: FaceTopology, radii: np.ndarray, individuality: np.ndarray) -> np.ndarray:
    radius = _relief(topology.theta, topology.phi) + individuality
    closed = _place_inner_parts(topology, _ellipsoid(topology.theta, topology.phi, radii, radius))
    return (closed + eye_opening(topology)).astype(np.float32)


def template_shape(topology: FaceTopology, rng: np.random.Generator) -> np.ndarray:
    """A subject's neutral face [V, 3], mouth closed and eyes open: the ellipsoid's radii and
    random low-frequency shape bumps are the subject's."""
    theta, phi = topology.theta, topology.phi
    radii = RADII * (1 + 0.06 * rng.standard_normal(3))
    individuality = np.zeros_like(theta)
    for _ in range(4):
        centre_theta, centre_phi = rng.uniform(-1, 1), rng.uniform(-0.8, 1.0)
        individuality += (
            0.03 * rng.standard_normal() * _bump(theta, phi, centre_theta, centre_phi, 0.5, 0.5)
        )
    return _head(topology, radii, individuality)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def _jaw_weight(topology: FaceTopology) -> np.ndarray:
    """[V] how fully a vertex follows the jaw: the lower lip, the chin and the lower teeth and
    floor of the mouth fully, the upper lip, the throat and the skull not at all, fading towards
    the ears and, under the chin, the neck. Along the lips the weight steps from 1 to 0 across
    the cut; beyond the mouth's corners the cheeks stretch: the step widens into a smooth rise
    over about 6 cm, so that a wide-open jaw creases no row of the cheek."""
    theta, phi, side = topology.theta, topology.phi, topology.mouth_side
    lateral = np.exp(-((theta / 0.75) ** 4))
    neck = 1 / (1 + np.exp(-(phi + 0.9) / 0.06))
    beyond_corner = _smoothstep((np.abs(theta) - (MOUTH_HALF_WIDTH - 0.04)) / 0.2)
    stepped = np.where(side < 0, 1.0, np.where(side == 0, 0.5, 0.0))
    half_rise = 0.02 + 0.3 * beyond_corner
    smooth = _smoothstep((MOUTH_PHI - phi) / (2 * half_rise) + 0.5)
    weight = ((1 - beyond_corner) * stepped + beyond_corner * smooth) * lateral * neck
    weight = np.where(np.isin(topology.part, (EYEBALL, UPPER_MOUTH, THROAT)), 0.0, weight)
    return np.where(topology.part == LOWER_MOUTH, 1.0, weight)


def blendshapes(topology: FaceTopology) -> dict[str, np.ndarray]:
    """Unit displacement fields [V, 3] (metres at weight 1) for visemes and expressions."""
    theta, phi = topology.theta, topology.phi
    skin = (topology.part == SKIN).astype(float)
    side = np.sign(theta)
    lip_side = topology.mouth_side
    reference = reference_shape(topology)
    lips = skin * _bump(theta, phi, 0, MOUTH_PHI, 0.35, 0.12)
    upper_lip = skin * (lip_side > 0) * _bump(theta, phi, 0, MOUTH_PHI, 0.3, 0.06)
    corners = skin * _mirrored_bump(theta, phi, 0.32, MOUTH_PHI, 0.15, 0.12)
    cheeks = skin * _mirrored_bump(theta, phi, 0.45, MOUTH_PHI + 0.3, 0.2, 0.15)
    brows = skin * _bump(theta, phi, 0, BROW_PHI, 0.6, 0.12)
    inner_brows = skin * _mirrored_bump(theta, phi, 0.15, BROW_PHI, 0.15, 0.1)
    nose = skin * _bump(theta, phi, 0, 0.08, 0.12, 0.1)
    opening = eye_opening(topology)

    def field(x, y, z):
        zero = np.zeros_like(theta)
        return np.stack([x + zero, y + zero, z + zero], axis=-1).astype(np.float32)

    # The jaw turns about the x axis through JAW_PIVOT: the chin goes down and a little back.
    arm = reference - JAW_PIVOT
    turned = JAW_ANGLE * np.stack([0 * arm[:, 0], -arm[:, 2], arm[:, 1]], -1)
    jaw_open = (_jaw_weight(topology)[:, None] * turned).astype(np.float32)
    jaw_open += field(0, 0.002 * upper_lip, 0)
    # Rounding pushes the lips forward and gathers the corners into a small opening.
    apart = lip_side * lips * (np.abs(theta) < MOUTH_HALF_WIDTH)
    # Closing and pressing thin the lips towards the mouth's line, which the lips' edges stay on:
    # they meet (the generator shuts the jaw on a closure, `mouth_weights`) but never pass.
    thinning = -0.3 * RADII[1] * (phi - MOUTH_PHI) * lips
    shapes = {
        "jaw_open": jaw_open,
        "lip_round": field(-0.008 * theta / 0.35 * lips, 0.002 * apart, 0.006 * lips),
        "lip_spread": field(0.008 * theta / 0.35 * lips, 0, -0.002 * lips),
        "lip_close": field(0, thinning, 0.001 * lips),
        "smile": field(0.004 * side * corners, 0.006 * corners + 0.003 * cheeks, 0.002 * cheeks),
        "frown": field(0, -0.006 * corners, 0),
        "brow_raise": field(0, 0.006 * brows, 0),
        "brow_lower": field(-0.002 * side * brows, -0.005 * brows, 0.001 * brows),
        "inner_brow_raise": field(0, 0.006 * inner_brows, 0),
        "eye_widen": (EYE_WIDEN_OPENING * opening).astype(np.float32),
        "squint": (-SQUINT_CLOSING * opening + field(0, 0.002 * cheeks, 0)).astype(np.float32),
        "lip_press": field(0, thinning, -0.002 * lips),
        "nose_wrinkle": field(0, 0.003 * nose, -0.001 * nose),
        "jaw_drop": 0.6 * jaw_open,
        "blink": (-opening).astype(np.float32),
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
    """[V, 3] RGB in [0, 1]: skin with lips and brows, eyeballs with iris and pupil, teeth and a
    dark throat inside the mouth, so that frames read at a glance."""
    theta, phi = topology.theta, topology.phi
    colors = np.tile(np.array([0.87, 0.72, 0.62]), (theta.shape[0], 1))

    def paint(where, color):
        weight = np.clip(where, 0, 1)[:, None]
        colors[:] = colors * (1 - weight) + np.array(color)[None] * weight

    skin = topology.part == SKIN
    lip_band = np.exp(-((theta / (1.05 * MOUTH_HALF_WIDTH)) ** 6)) * np.exp(
        -(((phi - MOUTH_PHI) / 0.07) ** 2)
    )
    paint(skin * 1.6 * lip_band, (0.7, 0.32, 0.32))
    paint(
        skin * 1.2 * _mirrored_bump(theta, phi, EYE_THETA, BROW_PHI, 0.16, 0.03), (0.3, 0.2, 0.13)
    )
    front = topology.eyeball_direction[:, 2]
    eyeball = topology.part == EYEBALL
    paint(eyeball, (0.95, 0.94, 0.92))
    paint(eyeball & (front > np.cos(0.45)), (0.32, 0.22, 0.14))
    paint(eyeball & (front > np.cos(0.2)), (0.03, 0.03, 0.03))
    u, v = topology.mouth_uv.T
    jaws = np.isin(topology.part, (UPPER_MOUTH, LOWER_MOUTH))
    paint(jaws, (0.45, 0.16, 0.17))
    paint(jaws & (v < 0.4) & (np.abs(u) < 0.8), (0.93, 0.91, 0.86))
    paint(topology.part == THROAT, (0.1, 0.02, 0.03))
    return colors
