"""What `nas export` exports: the arch (a run dir's rank, an arch file or a preset) and its trained weights.

Every way a source can be wrong (a run that has not finished, a damaged best.json, a checkpoint of
another arch) is one `UserError` line naming the flag, so nothing is built or written for it.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from nas.arch import Arch
from nas.errors import UserError
from nas.space import space_of

__all__ = ["find_weights", "load_trained", "pick_arch"]


def pick_arch(run_dir: Path | None, rank: int, arch: Path | None, preset: str | None) -> Arch:
    """The arch `nas export` exports: rank `rank` of a run dir's best.json, an arch file or a preset."""
    from nas.files import read_bounded
    from nas.space import find_preset

    given = [n for n, v in (("--run-dir", run_dir), ("--arch", arch), ("--preset", preset)) if v is not None]
    if len(given) != 1:
        raise UserError(f"give exactly one of --run-dir, --arch, --preset (got {', '.join(given) or 'none'})")
    if preset is not None:
        return find_preset(preset)
    if arch is not None:
        try:
            return Arch.from_json(read_bounded(arch, str(arch)))
        except OSError as err:
            raise UserError(f"--arch: cannot read {arch} ({err.strerror})") from None
        except UserError as err:
            raise UserError(f"--arch {arch}: {err}") from None
    return _ranked_arch(run_dir, rank)


def _ranked_arch(run_dir: Path, rank: int) -> Arch:
    """The arch at `rank` (1 = best) of `run_dir`'s best.json; every way it can fail is one `UserError` line."""
    from nas.files import load_json, read_bounded

    best_path = run_dir / "best.json"
    if not run_dir.is_dir():
        raise UserError(f"--run-dir: {run_dir} is not a directory; give the run dir of a search (its --run-dir)")
    if not best_path.exists() and not best_path.is_symlink():
        if any((run_dir / name).exists() for name in ("trials.jsonl", "strategy.json")):
            raise UserError(f"--run-dir: the search in {run_dir} has not finished ({best_path} is written at its "
                            "end); resume it with the same `nas search` command, or export with --arch or --preset")
        raise UserError(f"--run-dir: {best_path} not found; is {run_dir} the run dir of a finished search?")
    try:
        best = load_json(read_bounded(best_path, "best.json"), "best.json")
        if not isinstance(best, list) or not all(isinstance(r, dict) and "arch" in r for r in best):
            raise UserError("not a list of records with an 'arch' each")
    except OSError as err:
        raise UserError(f"--run-dir: cannot read {best_path} ({err.strerror or err})") from None
    except UserError as err:
        raise UserError(f"--run-dir: {best_path} is damaged (not JSON, or not what `nas search` writes): {err}; "
                        "re-run the search to rewrite it") from None
    if not best:
        raise UserError(f"--run-dir: the run {run_dir} has no ranked archs yet ({best_path} is an empty list: no "
                        "arch was evaluated successfully, trials.jsonl says why); fix that and re-run the search, "
                        "or export with --arch or --preset")
    if not 1 <= rank <= len(best):
        raise UserError(f"--rank must be between 1 and {len(best)} (archs in {best_path}); got {rank}")
    try:
        return Arch.from_dict(best[rank - 1]["arch"])
    except UserError as err:
        raise UserError(f"--run-dir: {best_path} is damaged at rank {rank} ({err}); re-run the search to rewrite "
                        "it") from None


def find_weights(run_dir: Path | None, rank: int, weights: Path | None) -> Path | None:
    """The `nas train` output dir whose weights `nas export` ships: `weights` when given, else the default
    `<run-dir>/train-rank<N>` when it holds a checkpoint; None: no trained weights (an untrained export)."""
    if weights is not None:
        return weights
    if run_dir is None:
        return None
    from nas.cli_train import default_out

    found = default_out(run_dir, rank, "", "") / "checkpoints"
    return found.parent if found.is_dir() and any(found.glob("step-*")) else None


def load_trained(arch: Arch, weights: Path) -> tuple[nn.Module, str]:
    """The eval-mode network of `arch` with the weights of the `nas train` run dir `weights` (its newest
    checkpoint, checked), and a one-phrase description of them; a one-line `UserError` for a checkpoint that is
    missing, corrupt, or of another arch or space config."""
    from nas.evaluate.supernet import newest_checkpoint

    space = space_of(arch)
    found = newest_checkpoint(weights, space, "--weights")
    trained = found.meta.get("method_config", {}).get("arch") if found.meta.get("method") == "standalone" else None
    if trained is None:
        raise UserError(f"--weights {weights}: a {found.meta.get('method')} supernet checkpoint, not a `nas train` "
                        f"run; give the --out of `nas train` (a supernet's arch: `nas train --init-from`)")
    if Arch.from_json(trained).hash != arch.hash:
        raise UserError(f"--weights {weights}: trained arch {Arch.from_json(trained).short_hash}, not the exported "
                        f"{arch.short_hash}; give the `nas train` dir of this arch (or --rank of that one)")
    model = space.build(arch)
    model.load_state_dict(found.load_state()["method"]["model"], strict=True)
    done = "" if found.meta.get("complete") else f", unfinished: step {found.step} of {found.meta['total_steps']}"
    return model.eval(), f"trained: {found.path.resolve()}{done}"
