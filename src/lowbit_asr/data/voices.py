"""Which synthetic speakers the corpus may use, and how a speaker's settings are drawn.

Training and held-out (dev/test) voices share nothing: not the espeak-ng accent, not the variant
(its formant table is the timbre), not the flite/festival voice. A speaker is one voice with
fixed settings drawn here: rate, pitch, duration stretch, warp and level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit_asr.data.tts import Voice

# Variants with echo, whisper, robot or chipmunk effects (Demonic, RicishayMax*, Tweaky,
# UniRobot, anikaRobot, caleb, croak, fast, kaukovalta, "Mr serious", robosoft*, whisper*, zac)
# are in neither list. Variants that copy a held-out variant's formants (m8 and Nguyen ~ m7;
# linda ~ belinda; aunty ~ f4; Storm ~ victor; announcer = klatt4) are held out with it.
TRAIN_VARIANTS = tuple(
    """Alex Alicia Andrea Andy Annie AnxiousAndy Denis Diogo Gene Gene2 Henrique Hugo Jacky Lee
    Marco Mario Michael Mike adam anika antonio benjamin boris david ed edward edward2 f1 f2 f3
    gustave iven iven2 iven3 iven4 klatt klatt2 klatt3 klatt5 klatt6 m1 m2 m3 m4 m5 marcelo max
    michel miguel norbert pablo paul pedro quincy rob robert sandro shelby steph steph2 steph3
    travis""".split()
)
HELDOUT_VARIANTS = tuple(
    """m6 m7 m8 Nguyen f4 f5 aunty belinda linda grandma grandpa john victor Storm klatt4
    announcer""".split()
)
FEMALE_VOICES = ("slt", "cmu_us_slt_arctic_hts")
IGNORES_PITCH = ("rms", "cmu_us_slt_arctic_hts")  # these voices' F0 cannot be set
IGNORES_STRETCH = ("cmu_us_slt_arctic_hts",)


@dataclass(frozen=True)
class VoicePool:
    """The voices one group of splits may use, and each engine's share of its speakers."""

    voices: dict[str, tuple[str, ...]]  #: engine -> voice names (espeak-ng: variants)
    accents: tuple[str, ...]  #: espeak-ng languages
    share: dict[str, float]  #: engine -> fraction of speakers


TRAIN = VoicePool(
    voices={
        "espeak-ng": TRAIN_VARIANTS,
        "flite": ("kal16", "awb", "rms", "kal"),
        "festival": ("kal_diphone",),
    },
    accents=("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd"),
    # The formant synthesiser alone transfers poorly to natural speech: mix the engines.
    share={"espeak-ng": 0.45, "flite": 0.40, "festival": 0.15},
)
HELDOUT = VoicePool(
    voices={
        "espeak-ng": HELDOUT_VARIANTS,
        "flite": ("slt",),
        "festival": ("ked_diphone", "cmu_us_slt_arctic_hts"),
    },
    accents=("en-029", "en-us-nyc"),
    share={"espeak-ng": 0.40, "flite": 0.30, "festival": 0.30},
)


class VoiceDealer:
    """Hands out speakers from one pool: engines by quota, voices in turn, settings at random.

    Engines follow their share deterministically (largest shortfall first), so even a handful
    of speakers mixes all engines; each engine's voices come round in a shuffled cycle, so every
    voice is used before any is reused. All draws come from ``rng``, in call order.
    """

    def __init__(self, pool: VoicePool, rng: np.random.Generator) -> None:
        self.pool, self.rng = pool, rng
        self.count = dict.fromkeys(pool.share, 0)
        self.queues: dict[str, list[str]] = {e: [] for e in pool.share}

    def next(self) -> Voice:
        """Draw the next speaker's voice."""
        share = self.pool.share
        total = sum(self.count.values()) + 1
        engine = max(share, key=lambda e: share[e] * total - self.count[e])
        self.count[engine] += 1
        if not self.queues[engine]:
            names = self.pool.voices[engine]
            self.queues[engine] = [names[i] for i in self.rng.permutation(len(names))]
        return self._settings(engine, self.queues[engine].pop(0))

    def _settings(self, engine: str, name: str) -> Voice:
        rng = self.rng
        gain = round(float(rng.uniform(0.3, 0.9)), 2)
        if engine == "espeak-ng":
            # Warps are whole percents so the resampling ratio stays small (e.g. 100/106).
            warp = int(rng.integers(94, 107)) / 100
            wpm = rng.uniform(135, 195)  # heard rate; the warp speeds up by `warp`
            return Voice(
                engine,
                name,
                accent=str(rng.choice(self.pool.accents)),
                speed=int(round(wpm / warp)),
                pitch=int(rng.integers(25, 76)),
                warp=warp,
                gain=gain,
            )
        # flite / festival: draw the heard tempo, F0 and warp, then undo the warp's effect on
        # tempo and F0 in the engine's own settings.
        tempo = rng.uniform(0.85, 1.15)
        if name in FEMALE_VOICES:
            warp, f0 = int(rng.integers(90, 111)) / 100, rng.uniform(150, 230)
        elif rng.random() < 0.3:  # a male voice raised towards a female register
            warp, f0 = int(rng.integers(108, 117)) / 100, rng.uniform(165, 215)
        else:
            warp, f0 = int(rng.integers(90, 107)) / 100, rng.uniform(80, 145)
        pitch = 0 if name in IGNORES_PITCH else int(round(f0 / warp))
        stretch = 1.0 if name in IGNORES_STRETCH else round(warp / tempo, 3)
        return Voice(engine, name, pitch=pitch, stretch=stretch, warp=warp, gain=gain)
