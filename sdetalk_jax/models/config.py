"""The networks' settings, `SDETalkConfig`, and every check of them, in one place.

Each field's meaning is written here once; configs/biwi.py sets the values and says why. "Ours"
marks an addition to the paper, each listed with its reason in docs/paper-notes.md; its value that
turns it off is the paper's network.
"""

from __future__ import annotations

import dataclasses

EMOTION_ATTENTION = ("sequential", "parallel")
MEL_CENTRING = ("none", "utterance")
HEAD_NOISE_KINDS = ("gaussian", "signed")
HEAD_GAIN_EMOTION = ("none", "embedding")
HEAD_MEAN_POSE = ("learned", "rest")


@dataclasses.dataclass(frozen=True)
class SDETalkConfig:
    num_vertices: int
    context_dim: int
    num_subjects: int
    num_emotions: int
    mel_bins: int = 128
    hidden: int = 128  # "128 hidden nodes" (Sec. 3)
    heads: int = 4  # "4 attention heads"
    decoder_blocks: int = 2  # N_d = 2
    feedforward: int = 256
    identity_dim: int = 32
    frequency_bands: int = 32  # mel bins are pooled into bands, one token each
    frequency_dim: int = 32
    frequency_window: int = 5  # frames of context per band token
    # How the emotion network joins its two attention blocks. "sequential", the paper's: the
    # temporal block works on the mel's own bins, the frequency block attends across the bands of
    # its output at `heads` and `hidden`, and the two outputs are fused. "parallel", ours: both
    # read the mel, the frequency block at 2 heads and `frequency_dim`.
    emotion_attention: str = "sequential"
    discriminator_blocks: int = 2
    # Residual dropout in the generator's attention blocks during training (the paper is silent).
    dropout: float = 0.0
    # "utterance", ours: the emotion network's input minus its own mean over the clip's frames,
    # per mel bin, so that it hears how the voice moves within the utterance and no speaker's
    # level. "none": the mel as it is (the paper).
    mel_centring: str = "none"
    # Ours: y_e is read from the clip's log-mel summary (`ops.clip_statistics`, standardised by
    # the training clips' spread) by one linear layer kept small by `loss.lambda_statistics`, which
    # holds for voices never heard; e's classifier is still trained by L_cls, so that e stays
    # emotional for G. False: y_e is the classifier on e (the paper).
    emotion_statistics: bool = False
    # Ours: the standard deviation, in frames, of a Gaussian that smooths z over time before the
    # diversity mapping, so that a sample's head motion has a direction of its own at a head's
    # pace. 0: independent noise per frame (the paper).
    noise_smoothing_frames: float = 0.0
    # Ours: G's cross-attention sees e~ only within this many frames of the query's frame, so that
    # a sample's motion can follow its own noise. 0: all frames (the paper).
    cross_attention_window: int = 0
    # Ours (`head_motion`): the head also turns with angular velocity gain(t) * n(t) per axis,
    # integrated over time; n is three channels of the noise, gain >= 0 is read from G's features.
    # At z = 0 it adds nothing.
    head_noise_path: bool = False
    # n of the head noise path (`head_motion.head_noise`): "gaussian", the noise's channels;
    # "signed", each channel at about +-1, so that the gain alone sets the speed.
    head_noise: str = "gaussian"
    # The integrated angle forgets its drift over about this many frames (a Gaussian high-pass).
    head_drift_frames: float = 50.0
    # Log-gain per output unit of the gain layer: an optimiser step of lr changes the gain by about
    # head_gain_log_scale * lr relative.
    head_gain_log_scale: float = 10.0
    # The gain also reads the loudness of this many frames up to its own (0: G's features only).
    head_gain_loudness_frames: int = 0
    # The gain also reads the clip's emotion: "embedding", e averaged over the clip; "none".
    head_gain_emotion: str = "none"
    # G's features enter the gain with their gradient stopped, so that the head terms do not
    # reshape the attention blocks the face is read from.
    head_gain_detached: bool = False
    # With the head noise path, the head a sample's turn is applied to: "learned", G's pose at
    # z = 0; "rest", the rest pose (the head stands still at z = 0).
    head_mean_pose: str = "learned"
    # Whether the training clips had head pose, as the data gives it (not a setting): False
    # holds the head at the rest pose (R = I, T = 0) in every sample, since no term taught it to
    # move and the head noise path's gain would turn it at its initial speed.
    head_motion: bool = True
    # Metres per network output unit for vertex and translation outputs (1 / loss.vertex_scale):
    # the heads predict millimetres, so an optimiser step of lr moves a vertex by about lr mm.
    motion_unit: float = 1e-3

    def __post_init__(self):
        check_model_options(self)

    @classmethod
    def for_run(
        cls,
        run_config,
        *,
        num_vertices: int,
        context_dim: int,
        num_subjects: int,
        num_emotions: int,
        head_motion: bool = True,
    ) -> SDETalkConfig:
        """The networks of a run: `run_config.model` (as `run_config.upgrade_run_config` leaves
        a saved one) with the sizes its data gives (the trainer reads them from the corpus,
        inference from the run's saved assets)."""
        if not run_config.loss.vertex_scale > 0:
            raise ValueError(
                "loss.vertex_scale is 0 (from the corpus): resolve it first "
                "(data.corpus.with_loss_scale), as training does"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in dict(run_config.model).items() if k in fields}
        return cls(
            **values,
            num_vertices=num_vertices,
            context_dim=context_dim,
            num_subjects=num_subjects,
            num_emotions=max(num_emotions, 1),
            head_motion=head_motion,
            motion_unit=1.0 / run_config.loss.vertex_scale,
        )


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"model.{name} is {value!r}: one of {', '.join(map(repr, choices))}")


def check_model_options(config: SDETalkConfig) -> None:
    """A clear error for a model option that is unknown or does nothing with the others."""
    _check_choice("emotion_attention", config.emotion_attention, EMOTION_ATTENTION)
    _check_choice("mel_centring", config.mel_centring, MEL_CENTRING)
    _check_choice("head_noise", config.head_noise, HEAD_NOISE_KINDS)
    _check_choice("head_gain_emotion", config.head_gain_emotion, HEAD_GAIN_EMOTION)
    _check_choice("head_mean_pose", config.head_mean_pose, HEAD_MEAN_POSE)
    if config.head_mean_pose == "rest" and not config.head_noise_path:
        raise ValueError(
            'model.head_mean_pose = "rest" needs model.head_noise_path: the head would never move'
        )
