"""Cross-check with NIST SCTK: sclite's WER and sc_stats' MAPSSWE agree with ours.

SCTK is a Debian package (``sctk``, in the Makefile's DEB_PACKAGES); Debian installs its tools
under ``/usr/lib/sctk/bin`` (``sctk path``), not on PATH, so both places are searched. A missing
SCTK is a broken set-up, not a skip.
"""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from scipy import stats

from lowbit_asr.train.scoring import UtteranceScore, score_utterance, write_split
from lowbit_asr.train.significance import compare_split

SCTK_BIN = "/usr/lib/sctk/bin"  # Debian's place for sclite, sc_stats, ...
VOCAB = [f"word{i}" for i in range(1000)]


def sctk_tool(name: str) -> str:
    """The path of an SCTK program; fails (with what to install) when there is none."""
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), SCTK_BIN]))
    if found is None:
        pytest.fail(f"NIST SCTK's {name} is not installed: run `make install` (make debs), or"
                    " `apt-get install -y sctk` as root")
    return found


def edit(words: list[str], kind: str, rng: random.Random) -> list[str]:
    """One error of ``kind`` (sub, del, ins, ins_start, ins_end) at a random inner position."""
    out = list(words)
    k = rng.randrange(1, len(out) - 1)
    if kind == "sub":
        out[k] = f"sub{rng.randrange(10**6)}"
    elif kind == "del":
        del out[k]
    elif kind == "ins":
        out.insert(k, "uh")
    elif kind == "ins_start":
        out.insert(0, "um")
    elif kind == "ins_end":
        out.append("hmm")
    return out


def fixture_pair(different: bool, seed: int = 0) -> tuple[list[UtteranceScore],
                                                          list[UtteranceScore]]:
    """100 utterances (25 speakers x 4) of distinct words (unambiguous alignments). A: one
    error in every eighth utterance. B: many errors (``different``) or A plus two words."""
    rng = random.Random(seed)
    ids = [f"{1000 + i // 4}-{20 + i % 2}-{i:04d}" for i in range(100)]
    refs = [rng.sample(VOCAB, rng.randint(8, 20)) for _ in ids]
    hyps_a = [edit(r, "sub", rng) if i % 8 == 0 else r for i, r in enumerate(refs)]
    if different:
        kinds = ["sub", "del", "ins", "ins_start", "ins_end"]
        hyps_b = [edit(edit(r, kinds[i % 5], rng), "sub", rng) if i % 5 < 3 else
                  (edit(r, kinds[i % 5], rng) if i % 3 else r) for i, r in enumerate(refs)]
    else:
        hyps_b = list(hyps_a)
        hyps_b[13] = edit(hyps_b[13], "sub", rng)
        hyps_b[42] = edit(hyps_b[42], "del", rng)
    a = [score_utterance(i, " ".join(r), " ".join(h))
         for i, r, h in zip(ids, refs, hyps_a, strict=True)]
    b = [score_utterance(i, " ".join(r), " ".join(h))
         for i, r, h in zip(ids, refs, hyps_b, strict=True)]
    return a, b


def sclite(directory: Path, title: str) -> tuple[float, str]:
    """sclite on an evaluation split folder: (its WER in percent, its SGML alignments)."""
    out = directory / "sclite"
    out.mkdir()
    subprocess.run([sctk_tool("sclite"), "-r", str(directory / "ref.trn"), "trn",
                    "-h", str(directory / "hyp.trn"), "trn", title, "-i", "spu_id",
                    "-o", "sum", "sgml", "-O", str(out)], check=True, capture_output=True)
    summary = (out / "hyp.trn.sys").read_text(errors="replace")
    # | Sum/Avg|  100   1400 | 99.1    0.9    0.0    0.0    0.9    12.0 |   (Err is the 5th)
    row = re.search(r"\|\s*Sum/Avg\s*\|\s*\d+\s+\d+\s*\|([^|]*)\|", summary)
    assert row, summary
    return float(row.group(1).split()[4]), (out / "hyp.trn.sgml").read_text(errors="replace")


def sc_stats(sgml: str) -> dict[str, float | str]:
    """sc_stats' MAPSSWE result of the two systems in ``sgml`` (first minus second)."""
    run = subprocess.run([sctk_tool("sc_stats"), "-p", "-t", "mapsswe", "-v", "-n", "-"],
                         input=sgml.encode(), check=True, capture_output=True)
    text = run.stdout.decode(errors="replace")
    m = re.search(r"MTCH_PR_RESULTS \(systems: (\S+) (\S+)\) \(# segs: (\d+)\).*?"
                  r"\(mean: *(-?[\d.]+)\).*?\(Z Stat: *(-?[\d.]+)\) \(Stat Diff: (\w+)\)", text)
    assert m, text
    return {"first": m.group(1), "segments": int(m.group(3)), "mean": float(m.group(4)),
            "z": float(m.group(5)), "significant": m.group(6)}


@pytest.mark.parametrize("different", [True, False], ids=["different", "same"])
def test_matches_sclite_and_sc_stats(tmp_path, different):
    a, b = fixture_pair(different)
    write_split(tmp_path / "A", a)
    write_split(tmp_path / "B", b)
    assert (tmp_path / "A" / "ref.trn").read_text() == (tmp_path / "B" / "ref.trn").read_text()
    wer_a, sgml_a = sclite(tmp_path / "A", "sysA")
    wer_b, sgml_b = sclite(tmp_path / "B", "sysB")
    sctk = sc_stats(sgml_a + sgml_b)
    ours = compare_split("test-clean", a, b)

    assert abs(wer_a - 100 * ours["wer_a"]) <= 0.1 and abs(wer_b - 100 * ours["wer_b"]) <= 0.1
    # sc_stats computes A - B; ours is B - A. Its Z is printed to three decimals.
    assert sctk["first"] == "sysA" and sctk["segments"] == ours["segments"]
    assert math.isclose(-sctk["z"], ours["mapsswe_z"], abs_tol=2e-3)
    p_sctk = float(2 * stats.norm.sf(abs(sctk["z"])))
    assert math.isclose(p_sctk, ours["mapsswe_p"], rel_tol=0.02, abs_tol=1e-6)
    significant = ours["verdict"] != "no significant difference"
    assert (sctk["significant"] == "Yes") == significant
    if different:
        assert ours["verdict"] == "B worse" and sctk["mean"] < 0
        assert ours["delta_ci"][0] > 0
    else:
        assert ours["verdict"] == "no significant difference" and ours["mapsswe_p"] > 0.05
