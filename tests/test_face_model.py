"""sdetalk_jax/data/face_model.py: the synthetic head's mesh, its mouth, eyes and blendshapes."""

import numpy as np
import pytest

from sdetalk_jax.data import face_model


@pytest.fixture(scope="module")
def head():
    topology = face_model.build_topology(3000)
    template = face_model.template_shape(topology, np.random.default_rng(4))
    return topology, template, face_model.blendshapes(topology)


def boundary_loops(faces: np.ndarray) -> list[set[int]]:
    """The vertex sets of the mesh's boundary loops (edges of one triangle only)."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), 1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    parent = {}

    def root(v):
        while parent.setdefault(v, v) != v:
            v = parent[v]
        return v

    for a, b in unique[counts == 1]:
        parent[root(a)] = root(b)
    loops = {}
    for v in list(parent):
        loops.setdefault(root(v), set()).add(v)
    return list(loops.values())


@pytest.mark.parametrize("count", [120, 1000, 4000, 23370])
def test_the_head_has_exactly_the_vertices_asked_for_and_every_one_is_used(count):
    topology = face_model.build_topology(count)
    assert topology.num_vertices == count
    assert len(np.unique(topology.faces)) == count
    edges = np.sort(topology.faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), 1)
    assert np.unique(edges, axis=0, return_counts=True)[1].max() <= 2  # a manifold


def test_too_few_vertices_for_a_face_are_refused():
    with pytest.raises(ValueError, match="at least 120"):
        face_model.build_topology(100)


def test_the_lips_are_the_two_sides_of_a_cut_that_the_jaw_opens(head):
    topology, template, shapes = head
    upper, lower = topology.upper_lip_vertex, topology.lower_lip_vertex
    # closed: one on the other; the mouth's cut is a boundary loop holding both
    np.testing.assert_allclose(template[upper], template[lower], atol=1e-7)
    mouth = [loop for loop in boundary_loops(topology.faces) if upper in loop]
    assert len(mouth) == 1 and lower in mouth[0]
    assert all(topology.part[v] == face_model.SKIN for v in mouth[0])
    opened = template + shapes["jaw_open"]
    gap = opened[upper] - opened[lower]
    assert gap[1] > 0.012  # the lower lip drops more than 12 mm at full opening
    # the jaw turns: the chin goes down and back, and the forehead does not move
    chin = np.nonzero(
        (topology.part == face_model.SKIN) & (np.abs(topology.theta) < 0.05)
        & (np.abs(topology.phi + 0.75) < 0.06)
    )[0][0]  # fmt: skip
    assert shapes["jaw_open"][chin, 1] < -0.008 and shapes["jaw_open"][chin, 2] < 0
    forehead = topology.phi > 0.6
    assert np.abs(shapes["jaw_open"][forehead]).max() < 1e-6


def test_closing_and_pressing_the_lips_thin_them_but_never_push_one_through_the_other(head):
    topology, template, shapes = head
    upper, lower = face_model.cut_edges(topology, "mouth")
    assert len(upper) == len(lower) > 3
    for close, press in [(1, 0), (0, 1.3), (1, 1.3)]:
        pressed = template + close * shapes["lip_close"] + press * shapes["lip_press"]
        gap = pressed[upper, 1] - pressed[lower, 1]
        np.testing.assert_allclose(gap, 0, atol=1e-7)  # the edges meet, as in the template
        # the lips thin: the upper lip's skin above its edge comes down towards the line
        above = (
            (topology.part == face_model.SKIN)
            & (np.abs(topology.theta) < 0.1)
            & (np.abs(topology.phi - face_model.MOUTH_PHI - 0.08) < 0.04)
        )
        assert np.all((pressed - template)[above, 1] < -1e-4)


def test_beyond_the_mouths_corners_the_cheeks_stretch_over_the_open_jaw_without_a_crease():
    """Along each column of the cheek the jaw's opening changes by at most a fifth of the lower
    lip's from one row to the next: no row carries the whole step from skull to jaw."""
    topology = face_model.build_topology(4000)
    jaw = face_model.blendshapes(topology)["jaw_open"]
    lower_lip = np.linalg.norm(jaw[topology.lower_lip_vertex])
    skin = topology.part == face_model.SKIN
    originals = skin & (np.arange(topology.num_vertices) < np.argmax(~skin))
    for theta in np.unique(topology.theta[originals]):
        if not 0.45 < abs(theta) < 0.9:
            continue
        column = np.nonzero(originals & (topology.theta == theta))[0]
        column = column[np.argsort(-topology.phi[column])]
        steps = np.linalg.norm(np.diff(jaw[column], axis=0), axis=1)
        assert steps.max() < 0.2 * lower_lip, (theta, steps.max() / lower_lip)


def test_a_blink_closes_each_eye_and_the_template_holds_it_open(head):
    topology, template, shapes = head
    upper, lower = face_model.cut_edges(topology, "eyes")
    assert len(upper) == len(lower) > 0
    open_gap = template[upper, 1].max() - template[lower, 1].min()
    assert open_gap > 0.006
    # each upper lid vertex meets the lower lid vertex under it
    shut = template + shapes["blink"]
    np.testing.assert_allclose(shut[upper], shut[lower], atol=1e-6)


def test_every_triangle_faces_outwards_on_a_subjects_head(head):
    """Outward winding (what glTF's one-sided materials and the normals need), checked on a
    subject's template, not only on the reference head it was wound on."""
    topology, template, _ = head
    corners = template[topology.faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    part = topology.part[topology.faces[:, 0]]
    skin = part == face_model.SKIN
    assert (np.einsum("fi,fi->f", normals[skin], corners[skin].mean(1)) > 0).mean() > 0.99
    inside = np.isin(part, face_model.MOUTH_INSIDE)
    assert (normals[inside, 2] > 0).mean() > 0.95


def test_the_inside_of_the_mouth_and_the_eyeballs_stay_behind_the_skin(head):
    """Nothing of the mouth's inside or of an eyeball stands in front of the closed face: each
    lies behind the skin vertex nearest to it in x and y."""
    topology, template, _ = head
    skin = topology.part == face_model.SKIN
    front = (template[:, 2] > 0) & skin
    for part in (face_model.EYEBALL, *face_model.MOUTH_INSIDE):
        inner = template[topology.part == part]
        distance = np.linalg.norm(inner[:, None, :2] - template[front][None, :, :2], axis=-1)
        nearest = template[front][np.argmin(distance, axis=1)]
        assert np.all(inner[:, 2] < nearest[:, 2] + 1e-4), part


def test_the_colours_mark_the_lips_the_eyes_and_a_dark_throat(head):
    topology, _, _ = head
    colors = face_model.vertex_colors(topology)
    assert colors.shape == (topology.num_vertices, 3) and colors.min() >= 0 and colors.max() <= 1
    throat = colors[topology.part == face_model.THROAT]
    skin = colors[topology.part == face_model.SKIN]
    assert throat.mean() < 0.2 < 0.6 < np.median(skin)
    pupils = colors[
        (topology.part == face_model.EYEBALL) & (topology.eyeball_direction[:, 2] > 0.99)
    ]
    assert pupils.max() < 0.1
