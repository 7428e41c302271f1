import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sdetalk_jax.models.wav2vec2 import (  # noqa: E402
    CheckpointError,
    Wav2Vec2Model,
    load_pretrained,
    pad_batch,
)
from sdetalk_jax.models.wav2vec2.encoder import ContextEncoder  # noqa: E402

TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    conv_dim=(32,) * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)
VARIANTS = {
    "post-layernorm (base-960h)": dict(
        do_stable_layer_norm=False, feat_extract_norm="group", conv_bias=False
    ),
    "stable-layernorm (large-lv60, xlsr)": dict(
        do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True
    ),
}


def save_reference(folder, variant, *, model_class=None, seed=0):
    torch.manual_seed(seed)
    config = transformers.Wav2Vec2Config(**TINY, **VARIANTS[variant])
    model = (model_class or transformers.Wav2Vec2Model)(config).eval()
    model.save_pretrained(folder)
    return model


def reference_hidden(model, waveform):
    with torch.no_grad():
        return model(torch.from_numpy(waveform)[None]).last_hidden_state[0].numpy()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_pytorch_single_and_padded(tmp_path, variant):
    reference = save_reference(tmp_path, variant)
    config, params = load_pretrained(os.fspath(tmp_path))
    model = Wav2Vec2Model(config)
    rng = np.random.default_rng(0)
    long = rng.standard_normal(40_000).astype(np.float32)  # 2.5 s
    short = rng.standard_normal(32_000).astype(np.float32)  # 2.0 s

    single, _ = model.apply({"params": params}, long[None])
    np.testing.assert_allclose(np.asarray(single[0]), reference_hidden(reference, long), atol=1e-4)

    audio, mask = pad_batch([long, short], multiple=16_000)
    batch, frame_mask = model.apply({"params": params}, audio, mask)
    expected_short = reference_hidden(reference, short)
    frames = expected_short.shape[0]
    assert int(frame_mask[1].sum()) == frames == config.frames_for(len(short))
    np.testing.assert_allclose(np.asarray(batch[1, :frames]), expected_short, atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(batch[0, : single.shape[1]]), np.asarray(single[0]), atol=1e-5
    )


def test_bin_checkpoint_with_ctc_head_and_prefix(tmp_path):
    reference = save_reference(
        tmp_path, "post-layernorm (base-960h)", model_class=transformers.Wav2Vec2ForCTC
    )
    state = reference.state_dict()
    assert any(k.startswith("wav2vec2.") for k in state) and any(
        k.startswith("lm_head") for k in state
    )
    os.remove(tmp_path / "model.safetensors")
    torch.save(state, tmp_path / "pytorch_model.bin")
    config, params = load_pretrained(os.fspath(tmp_path))
    waveform = np.random.default_rng(1).standard_normal(32_000).astype(np.float32)
    ours, _ = Wav2Vec2Model(config).apply({"params": params}, waveform[None])
    np.testing.assert_allclose(
        np.asarray(ours[0]), reference_hidden(reference.wav2vec2, waveform), atol=1e-4
    )


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_bin_is_refused(tmp_path):
    save_reference(tmp_path, "post-layernorm (base-960h)")
    os.remove(tmp_path / "model.safetensors")
    marker = tmp_path / "payload-ran"
    torch.save({"weights": _Payload(marker)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: refused or unreadable"):
        load_pretrained(os.fspath(tmp_path))
    assert not marker.exists()  # the payload did not run


def test_mismatched_config_names_the_tensor(tmp_path):
    save_reference(tmp_path, "post-layernorm (base-960h)")
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    config["intermediate_size"] = 96
    config_path.write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError,
        match=r"'encoder\.layers\.0\.feed_forward\.intermediate_dense\.(weight|bias)' has shape",
    ):
        load_pretrained(os.fspath(tmp_path))


def _hub_that_has_nothing(calls):
    """snapshot_download as on a machine whose cache lacks the model and that is offline."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    def snapshot_download(name, **kwargs):
        calls.append(kwargs.get("local_files_only", False))
        raise LocalEntryNotFoundError(f"{name} is not cached and the network is off")

    return snapshot_download


def test_unknown_hub_name_gives_guidance_and_inference_never_downloads(monkeypatch):
    import huggingface_hub

    from sdetalk_jax.models.wav2vec2.convert import resolve_checkpoint

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _hub_that_has_nothing(calls))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded here"):
        resolve_checkpoint("facebook/no-such-model-here", allow_download=False)
    assert calls == [True]  # the cache was read; the hub was never asked
    calls.clear()
    with pytest.raises(CheckpointError, match="the hub cannot be reached"):
        load_pretrained("facebook/no-such-model-here")
    assert calls == [True, False]  # cache first, then the hub


def test_unknown_hub_name_offline_in_a_fresh_process():
    """HF_HUB_OFFLINE is read when huggingface_hub is imported: set it before, in a new process."""
    code = (
        "from sdetalk_jax.models.wav2vec2.convert import load_pretrained\n"
        "try:\n    load_pretrained('facebook/no-such-model-here')\n"
        "except FileNotFoundError as error:\n    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert "not in the Hugging Face cache, and the hub cannot be reached" in result.stdout


def stereo_44k(path, seconds=1.5):
    t = np.arange(int(seconds * 44_100)) / 44_100
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    soundfile.write(path, np.stack([tone, 0.5 * tone], 1).astype(np.float32), 44_100)


def test_cli_on_44k_stereo(tmp_path):
    save_reference(tmp_path, "post-layernorm (base-960h)")
    wav, out = tmp_path / "in.wav", tmp_path / "h.npy"
    stereo_44k(wav)
    result = subprocess.run(
        [sys.executable, "-m", "sdetalk_jax.models.wav2vec2", "--checkpoint", os.fspath(tmp_path),
         "--audio", os.fspath(wav), "--out", os.fspath(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config, _ = load_pretrained(os.fspath(tmp_path))
    hidden = np.load(out)
    assert hidden.shape == (config.frames_for(24_000), 64)
    assert np.all(np.isfinite(hidden))

    missing = subprocess.run(
        [sys.executable, "-m", "sdetalk_jax.models.wav2vec2", "--checkpoint", os.fspath(tmp_path),
         "--audio", os.fspath(tmp_path / "nope.wav"), "--out", os.fspath(tmp_path / "new.npy")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert missing.returncode == 1 and "nope.wav: audio file not found" in missing.stderr
    assert not (tmp_path / "new.npy").exists()

    # An existing --out is kept unless --force.
    out.write_bytes(b"the user's own file")
    command = [
        sys.executable, "-m", "sdetalk_jax.models.wav2vec2", "--checkpoint", os.fspath(tmp_path),
        "--audio", os.fspath(wav), "--out", os.fspath(out),
    ]  # fmt: skip
    kept = subprocess.run(command, capture_output=True, text=True, check=False)
    assert kept.returncode == 1 and "h.npy already exists" in kept.stderr
    assert out.read_bytes() == b"the user's own file"
    forced = subprocess.run([*command, "--force"], capture_output=True, text=True, check=False)
    assert forced.returncode == 0, forced.stderr
    assert np.load(out).shape == hidden.shape


def checkpoint_cache_and_wav(tmp_path):
    """A saved base-960h-style checkpoint folder, an empty cache folder and a wav."""
    save_reference(tmp_path / "ckpt", "post-layernorm (base-960h)")
    wav = os.fspath(tmp_path / "a.wav")
    stereo_44k(wav)
    return os.fspath(tmp_path / "ckpt"), os.fspath(tmp_path / "cache"), wav


def test_feature_cache_keys_on_model_and_audio_and_survives_restart(tmp_path):
    _, cache, wav = checkpoint_cache_and_wav(tmp_path)

    first = ContextEncoder.from_pretrained(os.fspath(tmp_path / "ckpt"), cache_dir=cache)
    computed = first.encode_file(wav)
    assert (first.cache.hits, first.cache.misses) == (0, 1)

    restarted = ContextEncoder.from_pretrained(os.fspath(tmp_path / "ckpt"), cache_dir=cache)
    np.testing.assert_array_equal(restarted.encode_file(wav), computed)
    assert (restarted.cache.hits, restarted.cache.misses) == (1, 0)

    # Other audio content under the same name: a different key.
    stereo_44k(wav, seconds=2.0)
    assert restarted.encode_file(wav).shape[0] > computed.shape[0]
    assert restarted.cache.misses == 1

    # Other weights: a different fingerprint, so a different entry.
    save_reference(tmp_path / "other", "post-layernorm (base-960h)", seed=1)
    other = ContextEncoder.from_pretrained(os.fspath(tmp_path / "other"), cache_dir=cache)
    assert other.fingerprint != first.fingerprint
    other.encode_file(wav)
    assert (other.cache.hits, other.cache.misses) == (0, 1)

    # A damaged entry is recomputed, never served.
    entry = restarted.cache.path_for(wav)
    with open(entry, "wb") as handle:
        handle.write(b"\x93NUMPY half-written")
    again = ContextEncoder.from_pretrained(os.fspath(tmp_path / "ckpt"), cache_dir=cache)
    np.testing.assert_allclose(again.encode_file(wav), restarted.encode_file(wav))
    assert again.cache.misses == 1


def test_loaded_weights_are_put_on_the_device_once(tmp_path):
    """Read from safetensors as numpy, the weights are put on the device when the encoder is
    built: kept as numpy, every call would copy them there again (wav2vec2-base: 380 MB)."""
    save_reference(tmp_path / "ckpt", "post-layernorm (base-960h)")
    encoder = ContextEncoder.from_pretrained(os.fspath(tmp_path / "ckpt"))
    leaves = jax.tree.leaves(encoder.params)
    assert leaves
    for leaf in leaves:
        assert isinstance(leaf, jax.Array), type(leaf)


def test_dataset_examples_carry_cached_context(tmp_path, small_corpus):
    from sdetalk_jax.data import biwi
    from sdetalk_jax.data.pipeline import ClipDataset

    save_reference(tmp_path / "ckpt", "stable-layernorm (large-lv60, xlsr)")
    corpus = biwi.scan_corpus(small_corpus)
    encoder = ContextEncoder.from_pretrained(
        os.fspath(tmp_path / "ckpt"), cache_dir=os.fspath(tmp_path / "cache")
    )
    dataset = ClipDataset.from_corpus(corpus, "val", ("F2", "M3"), context_encoder=encoder)
    example = dataset.example(0)
    for index in range(1, len(dataset.clips)):
        dataset.example(index)
    assert encoder.cache.misses == len(dataset.clips)
    assert example["context"].shape == (int(example["num_frames"]), 64)
    assert dataset.time_scale["context"] == 1
    # A new run (new encoder, new dataset) reads every clip from the cache.
    encoder_again = ContextEncoder.from_pretrained(
        os.fspath(tmp_path / "ckpt"), cache_dir=os.fspath(tmp_path / "cache")
    )
    again = ClipDataset.from_corpus(corpus, "val", ("F2", "M3"), context_encoder=encoder_again)
    for index in range(len(again.clips)):
        again.example(index)
    assert encoder_again.cache.misses == 0
    assert encoder_again.cache.hits == len(again.clips)
    np.testing.assert_array_equal(again.example(0)["context"], example["context"])


def test_training_features_cover_the_same_audio_as_the_mel(tmp_path, small_corpus):
    """The context of a clip whose audio runs on past its face track is encoded from the span the
    track covers, as animate does, not from the whole file stretched over the track."""
    import shutil

    import soundfile

    from sdetalk_jax import audio
    from sdetalk_jax.data import biwi
    from sdetalk_jax.data.pipeline import ClipDataset

    root = tmp_path / "longer-audio"
    shutil.copytree(small_corpus, root)
    corpus = biwi.scan_corpus(os.fspath(root))
    clip = next(c for c in corpus.clips if c.subject == "F2" and c.split == "val")
    waveform = audio.load_audio(clip.audio_path)
    span = clip.num_frames * audio.samples_per_frame(corpus.fps)
    # Half a second more of audio, louder than the rest, after the track ends.
    tail = 0.9 * np.sin(np.arange(audio.SAMPLE_RATE // 2) * 0.3).astype(np.float32)
    soundfile.write(clip.audio_path, np.concatenate([waveform[:span], tail]), audio.SAMPLE_RATE)
    problems = [p for p in biwi.scan_corpus(os.fspath(root)).problems if p.path == clip.audio_path]
    assert any(p.severity == "warning" and "longer than its" in p.message for p in problems)

    save_reference(tmp_path / "ckpt", "stable-layernorm (large-lv60, xlsr)")
    encoder = ContextEncoder.from_pretrained(os.fspath(tmp_path / "ckpt"))
    dataset = ClipDataset.from_corpus(corpus, "val", ("F2", "M3"), context_encoder=encoder)
    index = next(i for i, c in enumerate(dataset.clips) if c.name == clip.name)
    context = dataset.example(index)["context"]
    spanned = audio.interpolate_frames(encoder.encode(waveform[:span]), clip.num_frames)
    np.testing.assert_allclose(context, spanned, atol=1e-5)
    stretched = audio.interpolate_frames(encoder.encode_file(clip.audio_path), clip.num_frames)
    assert np.abs(context - stretched).max() > 1e-2


@pytest.mark.parametrize(
    "kernel, stride, steps", [(3, 2, 33), (3, 2, 32), (2, 2, 21), (10, 5, 103), (4, 3, 50)]
)
def test_a_strided_convolution_as_matmuls_is_the_convolution(kernel, stride, steps):
    import jax

    from sdetalk_jax.models.wav2vec2.model import strided_conv_as_matmuls

    rng = np.random.default_rng(kernel * 100 + steps)
    x = rng.standard_normal((2, steps, 5)).astype(np.float32)
    kernel_first = rng.standard_normal((kernel, 5, 7)).astype(np.float32)
    expected = jax.lax.conv_general_dilated(
        x, kernel_first, (stride,), "VALID", dimension_numbers=("NWC", "WIO", "NWC")
    )
    ours = strided_conv_as_matmuls(x, kernel_first, stride, "float32")
    assert ours.shape == expected.shape
    np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), rtol=1e-5, atol=1e-5)


def relative_rms(ours, reference):
    return float(np.sqrt(np.mean((ours - reference) ** 2) / np.mean(reference**2)))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bfloat16_operands_stay_near_pytorch_and_still_mask_padding(tmp_path, variant):
    reference = save_reference(tmp_path, variant)
    config, params = load_pretrained(os.fspath(tmp_path))
    rng = np.random.default_rng(0)
    long = rng.standard_normal(40_000).astype(np.float32)
    short = rng.standard_normal(32_000).astype(np.float32)
    expected_long = reference_hidden(reference, long)
    expected_short = reference_hidden(reference, short)

    model = Wav2Vec2Model(config, "bfloat16")
    alone, _ = model.apply({"params": params}, short[None])
    alone = np.asarray(alone[0])
    # bfloat16 keeps 8 bits of each operand: about 1 % here (float32 is exact to 1e-4)
    assert 1e-4 < relative_rms(alone, expected_short) < 0.03
    audio, mask = pad_batch([long, short], multiple=16_000)
    batch, _ = model.apply({"params": params}, audio, mask)
    batch = np.asarray(batch)
    assert 1e-4 < relative_rms(batch[0, : len(expected_long)], expected_long) < 0.03
    # Padding changes nothing: the clip in a padded batch is the clip alone, as in float32.
    assert relative_rms(batch[1, : len(alone)], alone) < 1e-3


def test_bfloat16_features_are_cached_apart_and_keep_the_weights_identity(tmp_path):
    folder, cache, wav = checkpoint_cache_and_wav(tmp_path)
    exact = ContextEncoder.from_pretrained(folder, cache_dir=cache)
    fast = ContextEncoder.from_pretrained(folder, cache_dir=cache, matmul_operands="bfloat16")
    # The same weights (what a run records and animate checks), other features (the cache key).
    assert fast.fingerprint == exact.fingerprint
    assert fast.features_fingerprint != exact.features_fingerprint
    assert exact.features_fingerprint == exact.fingerprint  # float32 caches written before stay

    computed = exact.encode_file(wav)
    approximate = fast.encode_file(wav)
    assert (fast.cache.hits, fast.cache.misses) == (0, 1)  # not served float32's entry
    assert fast.cache.path_for(wav) != exact.cache.path_for(wav)
    assert 1e-4 < relative_rms(approximate, computed) < 0.03
    again = ContextEncoder.from_pretrained(folder, cache_dir=cache, matmul_operands="bfloat16")
    np.testing.assert_array_equal(again.encode_file(wav), approximate)
    assert again.cache.hits == 1

    with pytest.raises(ValueError, match="unknown encoder precision 'float16'.*bfloat16"):
        ContextEncoder.from_pretrained(folder, matmul_operands="float16")


@pytest.mark.parametrize("flags, warns", [("fpu sse avx2 fma", True), ("avx2 avx512_bf16", False)])
def test_bfloat16_operands_warn_on_a_cpu_without_bfloat16_dots(tmp_path, monkeypatch, flags, warns):
    import warnings

    from sdetalk_jax.models.wav2vec2 import encoder

    folder, _, _ = checkpoint_cache_and_wav(tmp_path)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(encoder, "CPUINFO", os.fspath(cpuinfo))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ContextEncoder.from_pretrained(folder, matmul_operands="bfloat16")
        ContextEncoder.from_pretrained(folder)  # float32 never warns
    messages = [str(w.message) for w in caught if "bfloat16 dot instructions" in str(w.message)]
    assert len(messages) == (1 if warns else 0)
