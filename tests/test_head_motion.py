"""sdetalk_jax/models/head_motion.py: the head at z = 0, the noise path, its gain and its noise."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sdetalk_jax import losses
from sdetalk_jax.models import head_motion, ops
from tests.model_fixtures import CONFIG, sample_and_centre


def test_the_head_at_z0_is_the_mean_prediction_and_can_carry_the_l2_terms():
    batch, sampled, at_zero, _ = sample_and_centre()
    np.testing.assert_allclose(sampled.mean_rotation, at_zero.rotation, atol=1e-6)
    np.testing.assert_allclose(sampled.mean_translation, at_zero.translation, atol=1e-8)
    assert np.abs(np.asarray(sampled.rotation - at_zero.rotation)).max() > 1e-4

    config = ml_collections.ConfigDict(
        dict(vertex_scale=1000.0, lambda_r=1.0, lambda_t=1.0,
             head_reconstruction="mean")
    )  # fmt: skip
    on_mean = losses.reconstruction_losses(sampled, batch, config)
    expected = losses.reconstruction_losses(at_zero, batch, config)
    for name in ("rotation", "translation"):
        np.testing.assert_allclose(on_mean[name], expected[name], rtol=1e-5)
    config.head_reconstruction = "sample"
    on_sample = losses.reconstruction_losses(sampled, batch, config)
    assert abs(float(on_sample["rotation"]) - float(on_mean["rotation"])) > 1e-3


def test_the_head_noise_path_turns_the_head_by_gain_times_noise():
    from sdetalk_jax.models.networks import Networks

    _, out, at_zero, params = sample_and_centre(head_noise_path=True)
    # At z = 0 the head is the mean head, which carries no noise; a sample's head is it turned.
    np.testing.assert_allclose(out.mean_rotation, at_zero.rotation, atol=1e-6)
    turned = np.einsum("bnij,bnkj->bnik", np.asarray(out.rotation), np.asarray(at_zero.rotation))
    assert np.abs(turned - np.eye(3)).max() > 1e-3
    np.testing.assert_allclose(turned, out.head_turn, atol=1e-5)
    assert out.head_gain.shape == out.head_turn.shape[:-1]
    # The path is an option: the paper's generator has no gain layer.
    assert "head_gain" in params["generator"]["face"]
    paper = Networks.build(CONFIG).init_params(jax.random.key(0))
    assert "head_gain" not in paper["generator"]["face"]


def test_a_head_never_taught_to_move_stands_still_in_every_sample():
    """Trained without head pose (`head_motion` False), the head noise path's gain and G's head
    layers have had no gradient: the same parameters, away from initialisation, turn the head
    with head motion on and hold it at the rest pose with it off, while the face is unchanged."""
    changes = dict(head_noise_path=True, head_noise="signed", head_mean_pose="learned")
    _, moving, _, _ = sample_and_centre(**changes)
    _, still, _, _ = sample_and_centre(head_motion=False, **changes)
    eye = np.broadcast_to(np.eye(3), still.rotation.shape)
    assert np.abs(np.asarray(moving.rotation) - eye).max() > 1e-3
    assert np.abs(np.asarray(moving.translation)).max() > 1e-6
    for rotation in (still.rotation, still.mean_rotation, still.head_turn):
        np.testing.assert_array_equal(rotation, eye)
    for zero in (still.translation, still.mean_translation, still.head_gain):
        np.testing.assert_array_equal(zero, 0.0)
    np.testing.assert_array_equal(still.expression, moving.expression)
    np.testing.assert_allclose(still.posed, still.expression, atol=1e-6)


def test_the_gain_can_read_the_loudness_of_the_frames_before_it():
    """The loudness path: louder than the clip's usual level just before a frame moves that frame's
    gain, and what comes after it does not; padding changes nothing."""
    mel = jax.random.normal(jax.random.key(2), (2, 12, 16))
    mask = jnp.arange(12)[None] < jnp.array([[12], [9]])
    window = ops.loudness_window(mel, mask, 4)
    assert window.shape == (2, 12, 4)
    np.testing.assert_allclose(window[0, 1:, 1], window[0, :-1, 0], atol=1e-6)  # one frame back
    np.testing.assert_allclose(window[1, :9, 0].std(), 1.0, atol=1e-3)  # standardised per clip
    assert float(jnp.abs(window[1, 9:]).max()) == 0.0
    alone = ops.loudness_window(mel[1:, :9], mask[1:, :9], 4)
    np.testing.assert_allclose(alone[0], window[1, :9], atol=1e-6)

    import dataclasses

    from sdetalk_jax.models.networks import Networks

    config = dataclasses.replace(CONFIG, head_noise_path=True, head_gain_loudness_frames=4)
    batch, _, _, params = sample_and_centre(head_noise_path=True, head_gain_loudness_frames=4)
    kernel = params["generator"]["face"]["head_gain_cues"]["kernel"]
    assert kernel.shape == (4, 3)

    def zeroed(params, layer):
        return jax.tree_util.tree_map_with_path(
            lambda path, x: 0 * x if f"'{layer}']['kernel" in jax.tree_util.keystr(path) else x,
            params,
        )

    # G's features read by a zero kernel, so that the log-gain stays inside its clip.
    hearing = zeroed(params["generator"], "head_gain")
    kernel = 0.2 * kernel
    hearing["face"]["head_gain_cues"]["kernel"] = kernel
    deaf = zeroed(hearing, "head_gain_cues")
    generator = Networks.build(config).generator
    noise = jnp.zeros(batch["frame_mask"].shape + (config.hidden,))
    gain, deaf_gain = (
        generator.apply({"params": p}, batch, noise).head_gain for p in (hearing, deaf)
    )
    # log gain = head_gain_log_scale * (G's features + loudness window @ kernel)
    window = ops.loudness_window(batch["mel"], batch["frame_mask"], 4)
    expected = config.head_gain_log_scale * jnp.einsum("bnk,kc->bnc", window, kernel)
    np.testing.assert_allclose(jnp.log(gain / deaf_gain), expected, atol=1e-4)
    assert float(jnp.abs(expected).max()) > 0.1


def test_the_gain_can_read_the_emotion_and_leave_gs_features_alone():
    """head_gain_emotion: e averaged over the clip, the same at every frame; head_gain_detached:
    the gain's terms do not reach G's attention blocks."""
    import dataclasses

    mask = jnp.arange(6)[None] < jnp.array([[6], [4]])
    embedding = jax.random.normal(jax.random.key(6), (2, 6, CONFIG.hidden))
    mel = jax.random.normal(jax.random.key(4), (2, 6, 16))

    def cues(embedding, emotion):
        config = dataclasses.replace(
            CONFIG, head_noise_path=True, head_gain_loudness_frames=3, head_gain_emotion=emotion
        )
        return head_motion.head_gain_cues(mel, mask, embedding, config)

    # e averaged over the clip's real frames, with its gradient: padding frames count for nothing
    read = cues(embedding, "embedding")
    assert read.shape == (2, 6, 3 + CONFIG.hidden)
    np.testing.assert_allclose(read[1, 0, 3:], embedding[1, :4].mean(0), rtol=1e-5)
    np.testing.assert_allclose(read[1, 5, 3:], embedding[1, :4].mean(0), rtol=1e-5)
    gradient = jax.grad(lambda e: cues(e, "embedding").sum())(embedding)
    assert float(jnp.abs(gradient[1, :4]).min()) > 0 and float(jnp.abs(gradient[1, 4:]).max()) == 0
    assert cues(embedding, "none").shape == (2, 6, 3)
    with pytest.raises(ValueError, match="head_gain_emotion"):
        cues(embedding, "valence")
    assert head_motion.head_gain_cues(mel, mask, embedding, CONFIG) is None  # the paper

    grads = gradients_with_and_without(
        "head_gain_detached", lambda out: out.head_gain.mean(), jax.random.key(5)
    )
    for detached, face in grads.items():
        reached = float(jnp.abs(face["block_1"]["feedforward_out"]["kernel"]).max())
        assert (reached == 0.0) == detached, (detached, reached)
        assert float(jnp.abs(face["head_gain"]["kernel"]).max()) > 0


def gradients_with_and_without(option, function, key):
    """{False: grads, True: grads} of function(outputs) for the generator parameters of the test
    networks (perturbed, with a small gain kernel so that the log-gain stays inside its clip and
    has a gradient), with the head noise path and `option` off and on."""
    import dataclasses

    from sdetalk_jax.models.networks import Networks

    batch, _, _, params = sample_and_centre(head_noise_path=True)
    face = params["generator"]["face"]
    face["head_gain"]["kernel"] = 0.01 * face["head_gain"]["kernel"]
    noise = jax.random.normal(key, batch["frame_mask"].shape + (CONFIG.hidden,))
    grads = {}
    for on in (False, True):
        generator = Networks.build(
            dataclasses.replace(CONFIG, head_noise_path=True, **{option: on})
        ).generator

        def apply(p, generator=generator):
            return function(generator.apply({"params": p}, batch, noise))

        grads[on] = jax.grad(apply)(params["generator"])["face"]
    return grads


def test_signed_noise_leaves_the_head_speed_to_the_gain():
    from sdetalk_jax.metrics import head_rotation_vectors

    z = jax.random.normal(jax.random.key(3), (2, 4000, 8))
    mask = jnp.ones(z.shape[:2], bool)
    for kind in head_motion.HEAD_NOISE_KINDS:  # on noise smoothed as the synthetic config does
        n = np.asarray(head_motion.head_noise(ops.smooth_noise(z, mask, 3.0), mask, kind))
        # the loss's E|n_k|, and about unit variance per axis, as the gain's units assume
        np.testing.assert_allclose(
            np.abs(n).mean((0, 1)), head_motion.head_noise_mean_abs(kind), rtol=0.03
        )
        np.testing.assert_allclose(np.square(n).mean((0, 1)), 1.0, rtol=0.1)
    with pytest.raises(ValueError, match="model.head_noise"):
        head_motion.head_noise(z, mask, "uniform")
    # "signed", on noise smoothed as the model smooths it: a mean |n_k| of exactly 1 per clip and
    # axis over its real frames (padding, here the second clip's last 3000 frames, takes no part),
    # and close to +-1 at most frames (the gain sets the speed; Gaussian noise: 40 %).
    short = mask.at[1, 1000:].set(False)
    smooth = ops.smooth_noise(z, short, 3.0)
    signed = np.asarray(head_motion.head_noise(smooth, short, "signed"))
    np.testing.assert_allclose(np.abs(signed[1, :1000]).mean(0), 1.0, rtol=1e-4)
    np.testing.assert_allclose(np.abs(signed[0]).mean(0), 1.0, rtol=1e-4)
    assert np.mean(np.abs(np.abs(signed[0]) - 1) < 0.3) > 0.75
    assert np.mean(np.abs(np.abs(np.asarray(smooth[0, :, :3])) - 1) < 0.3) < 0.45

    # In the model: the noise that turned the head, read back from a sample's turn (its angle
    # vectors, differenced) over the gain, is about +-1 on each axis at most frames with "signed".
    import dataclasses

    from sdetalk_jax.models.networks import Networks

    batch, _, _, params = sample_and_centre(head_noise_path=True)
    face = params["generator"]["face"]
    face["head_gain"]["kernel"] = 0.01 * face["head_gain"]["kernel"]  # inside the gain's clip
    noise = jax.random.normal(jax.random.key(4), batch["frame_mask"].shape + (CONFIG.hidden,))

    def turning_noise(kind):
        config = dataclasses.replace(
            CONFIG, head_noise_path=True, head_noise=kind, head_drift_frames=1e6
        )
        out = Networks.build(config).generator.apply({"params": params["generator"]}, batch, noise)
        per_axis = []
        for clip, length in enumerate(np.asarray(batch["frame_mask"]).sum(1)):
            turns = np.asarray(out.head_turn[clip, :length])
            angles = np.stack([head_rotation_vectors(np.stack([np.eye(3), r]))[0] for r in turns])
            gain = np.asarray(out.head_gain[clip, 1:length], np.float64)
            assert np.std(np.log(gain)) > 0.1  # a gain that changes over the clip
            per_axis.append(np.abs(np.diff(angles, axis=0) / gain))
        return np.concatenate(per_axis)

    assert np.mean(np.abs(turning_noise("signed") - 1) < 0.3) > 0.6
    assert np.mean(np.abs(turning_noise("gaussian") - 1) < 0.3) < 0.45


def test_a_mean_head_at_rest_stands_still_at_z0_and_moves_in_samples():
    import dataclasses

    batch, out, at_zero, _ = sample_and_centre(head_noise_path=True, head_mean_pose="rest")
    # the perturbed G would tilt the head (as test_the_head_noise_path_... shows); at rest it does not
    np.testing.assert_allclose(
        at_zero.rotation, np.broadcast_to(np.eye(3), at_zero.rotation.shape), atol=1e-6
    )
    np.testing.assert_allclose(at_zero.translation, 0.0, atol=1e-9)
    np.testing.assert_allclose(out.rotation, out.head_turn, atol=1e-6)
    assert np.abs(np.asarray(out.rotation) - np.eye(3)).max() > 1e-3
    _, learned, _, _ = sample_and_centre(head_noise_path=True)
    assert np.abs(np.asarray(learned.mean_rotation) - np.eye(3)).max() > 1e-3
    for changes, message in (
        (dict(head_mean_pose="rest"), "needs model.head_noise_path"),
        (dict(head_noise_path=True, head_mean_pose="posture"), "model.head_mean_pose is"),
        (dict(head_noise_path=True, head_noise="uniform"), "model.head_noise is"),
    ):
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(CONFIG, **changes)


def test_terms_on_a_samples_head_reach_the_mean_head_and_the_turn():
    """With the mean head learned, a sample's head is the turn of G's head at z = 0: a loss on it
    trains both G's rotation and translation layers and the gain (whether or not G's features
    reach the gain)."""

    def sample_head(out):
        return jnp.sum(out.rotation * jnp.arange(9.0).reshape(3, 3)) + out.translation.sum()

    for detached, face in gradients_with_and_without(
        "head_gain_detached", sample_head, jax.random.key(7)
    ).items():
        for name in ("rotation", "translation", "head_gain"):
            assert float(jnp.abs(face[name]["kernel"]).max()) > 0, (detached, name)
