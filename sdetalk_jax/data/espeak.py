"""Speech synthesis with eSpeak NG (through the `espeakng-loader` wheel and ctypes).

`synthesize` returns the waveform and the synthesiser's own phoneme events with their sample
positions, which is what lets the synthetic corpus drive the lips from the real phoneme timing.
eSpeak keeps global state, so one process holds one initialised engine (`_engine`). That state
(the glottal-source phase, noise generators) carries over from one call to the next: the same text
gives slightly different samples on a second call, and neither `srand` nor `espeak_ng_SetRandSeed`
resets it. The first call in a fresh process is reproducible, so callers that need byte-identical
audio synthesise each utterance in a new process (see `synthetic.generate_corpus`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import threading

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_CHARS_UTF8 = 1
_PARAMS = {"rate": 1, "volume": 2, "pitch": 3, "range": 4, "wordgap": 7}


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


class SpeechError(RuntimeError):
    """eSpeak NG could not be loaded or could not synthesise."""


@dataclasses.dataclass(frozen=True)
class Prosody:
    """eSpeak's own units: rate in words/min, pitch and range 0-100, volume 0-200."""

    rate: int = 175
    pitch: int = 50
    range: int = 50
    volume: int = 100


@dataclasses.dataclass(frozen=True)
class PhonemeEvent:
    phoneme: str
    start_s: float  # where the phoneme starts in the waveform


@dataclasses.dataclass(frozen=True)
class Utterance:
    waveform: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    phonemes: tuple[PhonemeEvent, ...]


class _Engine:
    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as err:  # a dependency of the package; say so rather than crash
            raise SpeechError(
                "espeakng-loader is not installed (pip install espeakng-loader)"
            ) from err
        try:
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
        except OSError as err:
            raise SpeechError(f"cannot load eSpeak NG: {err}") from err
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        # Breathy variants (f2, f3, ...) add noise from eSpeak's generator, seeded from the clock
        # at start-up unless set; older builds lack the setter.
        self._set_seed = getattr(lib, "espeak_ng_SetRandSeed", None)
        if self._set_seed is not None:
            self._set_seed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        data_path = espeakng_loader.get_data_path().encode()
        self.sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS,
            0,
            data_path,
            _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT,
        )
        if self.sample_rate <= 0:
            raise SpeechError(f"espeak_Initialize failed (returned {self.sample_rate})")
        self.lib = lib
        self.lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []
        # Keep a reference: ctypes callbacks must outlive every call that may invoke them.
        self._callback = _CALLBACK(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, samples, count, events):
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        index = 0
        while events[index].type != _EVENT_LIST_TERMINATED:
            event = events[index]
            if event.type == _EVENT_PHONEME:
                self._events.append((event.id.string.decode("ascii", "replace"), event.sample))
            index += 1
        return 0

    def synthesize(self, text: str, voice: str, prosody: Prosody, seed: int) -> Utterance:
        with self.lock:
            self._chunks, self._events = [], []
            if self._set_seed is not None:
                self._set_seed(seed)
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise SpeechError(f"eSpeak NG has no voice '{voice}'")
            for name in ("rate", "pitch", "range", "volume"):
                self.lib.espeak_SetParameter(_PARAMS[name], int(getattr(prosody, name)), 0)
            self.lib.espeak_SetParameter(_PARAMS["wordgap"], 0, 0)
            encoded = text.encode("utf-8") + b"\0"
            status = self.lib.espeak_Synth(encoded, len(encoded), 0, 0, 0, _CHARS_UTF8, None, None)
            if status != 0:
                raise SpeechError(f"espeak_Synth failed with status {status} for {text!r}")
            self.lib.espeak_Synchronize()
            waveform = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            events = tuple(
                PhonemeEvent(name.strip(), sample / self.sample_rate)
                for name, sample in self._events
            )
        return Utterance((waveform / 32768.0).astype(np.float32), self.sample_rate, events)


@functools.cache
def _engine() -> _Engine:
    return _Engine()


def synthesize(
    text: str, *, voice: str = "en", prosody: Prosody = Prosody(), seed: int = 0
) -> Utterance:
    """Speaks `text` with an eSpeak NG voice (e.g. `en+f3`) and the given prosody; `seed` feeds
    the noise of breathy voices."""
    return _engine().synthesize(text, voice, prosody, seed)
