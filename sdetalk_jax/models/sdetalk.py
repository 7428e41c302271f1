"""SDETalk's generator and discriminator (paper Sec. 2.1) in Flax linen.

    Generator      identity p, neutral face f^n (Eq. 2), emotional embedding e, emotion mixture y_e,
                   diversified embedding e~, emotional face f^e, head pose R, T (Eq. 3), f (Eq. 4)
    Discriminator  consistency discriminator D on (e, f): real/fake, identity, emotion mixture

The emotion network is in `emotion`, the head noise path in `head_motion`, the vCLUB estimators in
`vclub`, the settings in `config`. The frozen context encoder (wav2vec 2.0) runs outside: the
generator takes its states already aligned to the face frames (Eq. 1), which is what lets them be
cached. Interpretations of what the paper leaves open are in docs/paper-notes.md.
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from sdetalk_jax.models import head_motion
from sdetalk_jax.models.config import SDETalkConfig
from sdetalk_jax.models.emotion import (
    EmotionClassifier,
    EmotionEmbeddingNetwork,
    StatisticsReadout,
    steer_embedding,
)
from sdetalk_jax.models.layers import (
    AttentionBlock,
    CoordinateRowsDense,
    FrameAndClipDense,
    OutputDense,
    PartsDense,
)
from sdetalk_jax.models.ops import (
    coordinate_rows,
    masked_mean,
    pose_faces,
    rotation_from_6d,
    sinusoidal_positions,
    smooth_noise,
)


@flax.struct.dataclass
class GeneratorOutputs:
    """What G hands back for a batch [B, N] (shapes per field). The optional fields are None
    unless the config or the call asks for them."""

    identity: jax.Array  # p [B, identity_dim]
    # every training speaker's p [S, identity_dim], the marginal of p for the vCLUB bound (Eq. 6)
    identity_table: jax.Array
    context: jax.Array  # c [B, N, Dc] (Eq. 1, aligned outside)
    embedding: jax.Array  # e [B, N, hidden]
    mixture: jax.Array  # y_e [B, E]
    emotional_logit: jax.Array  # "spoken with emotion" [B]
    neutral: jax.Array  # f^n [B, N, V*3] (Eq. 2)
    expression: jax.Array  # f^e [B, N, V*3]
    rotation: jax.Array  # R [B, N, 3, 3]
    translation: jax.Array  # T [B, N, 3]
    posed: jax.Array | None = None  # f [B, N, V*3] (Eq. 4); dropped in training, where D poses
    # the head at z = 0 (with `mean_head` or the head noise path)
    mean_rotation: jax.Array | None = None
    mean_translation: jax.Array | None = None
    head_turn: jax.Array | None = None  # the head noise path's turn [B, N, 3, 3]
    head_gain: jax.Array | None = None  # its gain [B, N, 3]
    # with `emotion_statistics`, in training: e's own classifier's mixture (for L_cls, which
    # trains e) and the readout's ridge penalty
    embedding_mixture: jax.Array | None = None
    statistics_penalty: jax.Array | None = None


def requests_emotion(batch) -> bool:
    """Whether the batch carries a requested emotion: emotion_target [B, hidden],
    emotion_inferred_weight [B] and expression_scale [B], always together
    (`emotion_control.request_inputs`)."""
    return "emotion_target" in batch


def scaled_offset(offset, batch):
    """G's expression offset [B, N, V*3] times the requested intensity, `expression_scale` [B],
    if the batch requests an emotion (0 is f^n)."""
    if requests_emotion(batch):
        return batch["expression_scale"][:, None, None] * offset
    return offset


class EmotionalFaceGenerator(nn.Module):
    """G (Eq. 3): transformer decoder, query f^n (+) e, key/value e~ -> f^e, R, T."""

    config: SDETalkConfig

    @nn.compact
    def __call__(
        self,
        neutral_motion,
        embedding,
        diversified,
        mask,
        deterministic: bool = True,
        speech_cues=None,
        pool_mask=None,
    ):
        """-> (f^e offset, R, T, the head gain [B, N, 3] of the head noise path or None).
        neutral_motion: G_n's motion in network units as `FrameAndClipDense`'s parts, [B, N, V*3]
        and [B, V*3] (`Generator.neutral_face`).
        speech_cues [B, N, K] or None: what the gain reads beside G's features (`head_gain_cues`).
        pool_mask [B, N] or None: if given, only the offset's mean over the masked frames [B, V*3]
        (zero for a row without frames), and None for the rest. The offset layer is affine, so
        that is the layer applied once to the mean of its input, not to every frame."""
        config = self.config
        # f^n (+) e through one linear layer, written as the sum of its two blocks so that each
        # part is initialised for its own width: e (128 wide) is not drowned by f^n (V*3 wide).
        query = PartsDense(config.hidden, name="query_face")(*neutral_motion) + nn.Dense(
            config.hidden, use_bias=False, name="query_emotion"
        )(embedding)
        query = query + sinusoidal_positions(query.shape[1], config.hidden)
        for index in range(config.decoder_blocks):
            query = AttentionBlock(
                config.hidden,
                config.heads,
                config.feedforward,
                cross=True,
                dropout=config.dropout,
                name=f"block_{index}",
            )(query, mask, diversified, mask, deterministic, config.cross_attention_window)
        # Zero-initialised heads: training starts from f^e = f^n, R = I, T = 0.
        expression_layer = OutputDense(
            config.num_vertices * 3,
            scale=config.motion_unit,
            kernel_init=nn.initializers.zeros,
            name="expression",
        )
        if pool_mask is not None:
            rows_with_frames = jnp.any(pool_mask, axis=1, keepdims=True)
            pooled = expression_layer(masked_mean(query, pool_mask))
            return jnp.where(rows_with_frames, pooled, 0.0), None, None, None
        expression = expression_layer(query)
        identity_6d = jnp.array([1.0, 0, 0, 0, 1.0, 0])
        rotation = rotation_from_6d(
            identity_6d + nn.Dense(6, kernel_init=nn.initializers.zeros, name="rotation")(query)
        )
        translation = config.motion_unit * nn.Dense(
            3, kernel_init=nn.initializers.zeros, name="translation"
        )(query)
        gain = None
        if config.head_noise_path:

            def dense(name, use_bias):
                return nn.Dense(3, use_bias=use_bias, kernel_init=nn.initializers.zeros, name=name)

            gain = head_motion.head_gain(query, speech_cues, config, dense)
        return expression, rotation, translation, gain


class Generator(nn.Module):
    """Everything trained by the generator loss; see the module docstring."""

    config: SDETalkConfig

    def setup(self):
        config = self.config
        self.identity = nn.Dense(config.identity_dim, use_bias=False, name="identity")
        # G_n's motion in network units (motion_unit, mm for data in metres): G's query reads it
        # as it is, and f^n scales it back to data units on the way.
        self.neutral_generator = FrameAndClipDense(
            config.num_vertices * 3, kernel_init=nn.initializers.zeros, name="neutral"
        )
        self.emotion_network = EmotionEmbeddingNetwork(config, name="emotion")
        self.classifier = EmotionClassifier(config, name="classifier")
        if config.emotion_statistics:
            self.statistics = StatisticsReadout(config, name="statistics")
        self.diversity = nn.Dense(2 * config.hidden, name="diversity")
        self.face_generator = EmotionalFaceGenerator(config, name="face")

    def neutral_face(self, batch):
        """(p, G_n's motion in network units as its two parts without gradient (see
        `FrameAndClipDense`), f^n = G_n(c (+) p) + f_0^n) of Eq. 2."""
        identity = self.identity(batch["subject_onehot"])
        neutral_motion, motion_parts = self.neutral_generator(batch["context"], identity)
        neutral = self.config.motion_unit * neutral_motion + batch["template"][:, None]
        return identity, motion_parts, neutral

    def clip_embedding(self, mel, mask):
        """The clip's emotional embedding e averaged over its frames [B, hidden]: what the
        classifier pools, and what emotion prototypes are fitted to."""
        return masked_mean(self.emotion_network(mel, mask), mask)

    def read_emotion(self, batch, deterministic: bool = True):
        """(e, y_e, the "spoken with emotion" logit, e's classifier's own mixture or None, the
        readout's penalty or None). e is steered to a requested emotion if the batch asks for one
        (emotion_control.py). With `model.emotion_statistics` y_e is the voice statistics'
        readout (for a request, only where it names no category: the voice's own emotion at
        another intensity), and without a request e's classifier's mixture and the readout's
        penalty are handed back too, for training."""
        mask = batch["frame_mask"]
        embedding = self.emotion_network(batch["mel"], mask, deterministic)  # e
        requested = requests_emotion(batch)
        if requested:
            embedding = steer_embedding(embedding, mask, batch)
        mixture, emotional_logit = self.classifier(embedding, mask)  # y_e
        embedding_mixture = penalty = None
        if self.config.emotion_statistics:
            readout, statistics_penalty = self.statistics(batch["mel"], mask)
            if requested:
                # A request that names a category replaces what the voice says: y_e is then
                # read from the steered e, as in the paper.
                voice_only = batch["emotion_inferred_weight"][:, None] >= 1.0
                mixture = jnp.where(voice_only, readout, mixture)
            else:  # e's own reading is kept for L_cls, which trains e
                embedding_mixture, penalty, mixture = mixture, statistics_penalty, readout
        return embedding, mixture, emotional_logit, embedding_mixture, penalty

    def diversified(self, embedding, noise, mask):
        """(mu, e~ = mu + sigma z with the noise smoothed over time, the head path's noise)."""
        mean, log_variance = jnp.split(self.diversity(embedding), 2, axis=-1)
        log_variance = jnp.clip(log_variance, -8.0, 4.0)
        noise = smooth_noise(noise, mask, self.config.noise_smoothing_frames)
        diversified = mean + jnp.exp(0.5 * log_variance) * noise  # e~, reparameterised
        return mean, diversified, head_motion.head_noise(noise, mask, self.config.head_noise)

    def mean_expression_offset(self, batch, noise):
        """G's expression offset f^e - f^n averaged over each row's frames [B, V*3] (zero for a
        row without frames), as `__call__` draws it with `noise`: what emotion prototypes are
        fitted to (emotion_control.py). The offset layer runs once per row, on the mean of its
        input, not on every frame: a clip's mean face for a fraction of its frames' memory."""
        mask = batch["frame_mask"]
        _, neutral_motion, _ = self.neutral_face(batch)
        embedding = self.read_emotion(batch)[0]
        _, diversified, _ = self.diversified(embedding, noise, mask)
        cues = head_motion.head_gain_cues(batch["mel"], mask, embedding, self.config)
        offset, _, _, _ = self.face_generator(
            neutral_motion, embedding, diversified, mask, True, cues, pool_mask=mask
        )
        return scaled_offset(offset[:, None], batch)[:, 0]

    def __call__(
        self, batch, noise, deterministic: bool = True, mean_head: bool = False, neutral_parts=None
    ) -> GeneratorOutputs:
        """batch: context [B,N,Dc], mel [B,N,bins], subject_onehot [B,S], template [B,V*3],
        frame_mask [B,N], and optionally a requested emotion (`requests_emotion`); noise: z
        [B,N,hidden] ~ N(0, I). Training passes deterministic=False and a 'dropout' key (used
        only if `dropout` > 0); with `mean_head`, the outputs hold the head pose at z = 0 too.
        `neutral_parts`: `neutral_face(batch)` if known (training shares it between samples)."""
        mask = batch["frame_mask"]
        identity, neutral_motion, neutral = neutral_parts or self.neutral_face(batch)  # p, Eq. 2
        embedding, mixture, emotional_logit, embedding_mixture, penalty = self.read_emotion(
            batch, deterministic
        )
        mean, diversified, turn_noise = self.diversified(embedding, noise, mask)
        # G_n is trained by L_n alone ("we separately estimate the neutral mouth shape and the
        # emotional expressions"): G reads f^n and adds the expression on top of it, but its losses
        # do not reach G_n, so f^n stays a neutral face and "G_n alone" is a real baseline.
        neutral_motion = jax.lax.stop_gradient(neutral_motion)
        cues = head_motion.head_gain_cues(batch["mel"], mask, embedding, self.config)
        offset, rotation, translation, _ = self.face_generator(
            neutral_motion, embedding, diversified, mask, deterministic, cues
        )
        expression = jax.lax.stop_gradient(neutral) + scaled_offset(offset, batch)  # f^e
        head = {}
        if mean_head or self.config.head_noise_path:
            # G again at the centre of the noise (e~ = mu); only its head is used, so XLA drops
            # the expression layer of this pass.
            _, mean_rotation, mean_translation, gain = self.face_generator(
                neutral_motion, embedding, mean, mask, deterministic, cues
            )
            turn = None
            if self.config.head_noise_path:
                rotation, translation, mean_rotation, mean_translation, turn = (
                    head_motion.sample_head(
                        mean_rotation, mean_translation, gain, turn_noise, mask, self.config
                    )
                )
            head = dict(
                mean_rotation=mean_rotation, mean_translation=mean_translation, head_turn=turn,
                head_gain=gain,
            )  # fmt: skip
        if not self.config.head_motion:
            rotation, translation, head = head_at_rest(rotation, translation, head)
        return GeneratorOutputs(
            identity=identity,
            identity_table=self.identity(jnp.eye(self.config.num_subjects)),
            context=batch["context"],
            embedding=embedding,
            mixture=mixture,
            emotional_logit=emotional_logit,
            neutral=neutral,
            expression=expression,
            rotation=rotation,
            translation=translation,
            posed=pose_faces(expression, rotation, translation),  # Eq. 4
            embedding_mixture=embedding_mixture,
            statistics_penalty=penalty,
            **head,
        )


def head_at_rest(rotation, translation, head: dict):
    """(R, T, the head fields) of a head held at the rest pose: I and 0 in place of every rotation
    and translation, a gain of 0 (`SDETalkConfig.head_motion` False)."""
    rest = {
        "rotation": jnp.broadcast_to(jnp.eye(3), rotation.shape),
        "translation": jnp.zeros_like(translation),
    }
    held = {}
    for name, value in head.items():
        if value is None:
            held[name] = None
        elif name == "head_gain":
            held[name] = jnp.zeros_like(value)
        else:
            held[name] = rest["translation" if name.endswith("translation") else "rotation"]
    return rest["rotation"], rest["translation"], held


class Discriminator(nn.Module):
    """Consistency discriminator D: transformer encoder on (e, f) -> real/fake logit, identity logits,
    emotion mixture."""

    config: SDETalkConfig

    @nn.compact
    def __call__(self, embedding, face_rows, template, mask):
        """face_rows: the faces [B, N, V*3] as coordinate rows [B, N, 3, V] (`coordinate_rows`,
        as `pose_rows` poses them); template [B, V*3]."""
        config = self.config
        # Identity-free input: displacement from the template, in network units (mm).
        motion = (face_rows - coordinate_rows(template)[:, None]) / config.motion_unit
        x = CoordinateRowsDense(config.hidden, name="face_in")(motion) + nn.Dense(
            config.hidden, name="emotion_in"
        )(embedding)
        x = x + sinusoidal_positions(x.shape[1], config.hidden)
        for index in range(config.discriminator_blocks):
            x = AttentionBlock(
                config.hidden, config.heads, config.feedforward, name=f"block_{index}"
            )(x, mask)
        pooled = masked_mean(x, mask)
        real_fake = nn.Dense(1, name="real_fake")(pooled)[:, 0]
        identity_logits = nn.Dense(config.num_subjects, name="identity")(pooled)
        mixture = jax.nn.softmax(nn.Dense(config.num_emotions, name="emotion")(pooled), axis=-1)
        return real_fake, identity_logits, mixture
