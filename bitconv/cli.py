"""The `bitconv` command line: a thin click layer over the library (the only click importer)."""
from __future__ import annotations

import os
import sys
import traceback
from typing import Any, NoReturn

import click

from bitconv.errors import BitconvError, os_error_line
from bitconv.formats import FORMAT_NAMES  # names only: no numpy at `--help`

MODES = ("exact", "bitnet.cpp", "llama.cpp")  # runtime/bitlinear.py MODES, checked in tests
# every command that reads a packed GGUF: where a TL1/TL2 file's tiling comes from
KERNEL_CONFIG = click.option(
    "--kernel-config", type=click.Path(path_type=str), default=None,  # the library reads it
    help="For a TL1/TL2 file: the kernel_config.ini it was written with (bitnet.cpp's "
         "include/kernel_config.ini) [default: FILE.kernel_config.ini beside it, else the "
         "file's bitconv.tl.kernel_config key; a TL file with neither is refused].")

# run, logits, eval: research inference modes (runtime/research.py), on top of exact mode
RESEARCH = click.option(
    "--research", default=None, metavar="SPEC",
    help="Research inference modes on top of exact mode: a preset (a4.8, v2, q-sparse) and/or "
         "SITE=BITS[:absmean][:topK][:hadamard] and kv=BITS[:bosN] (the first position's K/V "
         "at N bits; default max(BITS, 4)), comma-separated; SITE is attn_in, o_in, ffn_in, "
         "down_in or all (e.g. 'a4.8,kv=3', 'all=4', 'o_in=8:top0.5', 'v2,kv=3:bos8').")


def _memory_size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    from bitconv.errors import InputError
    from bitconv.runtime.memory import parse_size

    try:
        return None if value is None else parse_size(value)
    except InputError as e:
        raise click.BadParameter(str(e)) from None


# run, logits, eval, verify: the memory the runtime may use (runtime/memory.py)
MEMORY = click.option(
    "--memory", default=None, metavar="SIZE", callback=_memory_size,
    help="Memory the runtime may use, e.g. 14G or 512M [default: what is available: "
         "MemAvailable, or less under RLIMIT_AS or a cgroup limit]. run and eval keep the "
         "ternary weights as float32 or int8 codes, the first that fits, else stream them "
         "from the file, as logits and verify always do; a model that fits in none is "
         "refused before loading, with how much it needs.")


class BitconvGroup(click.Group):
    """Turns a BitconvError into one line on stderr and its exit status (1, or 3 for verify),
    and any other OSError (permission, is-a-directory, loop, name too long, disk full, file size
    limit: on an input or an output path) into one line naming the path, exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BitconvError as e:  # before OSError: PullError is one
            self._fail(ctx, str(e), e.exit_code)
        except OSError as e:
            self._fail(ctx, os_error_line(e), 1)

    @staticmethod
    def _fail(ctx: click.Context, line: str, code: int) -> NoReturn:
        click.echo(f"Error: {line}", err=True)
        if os.environ.get("BITCONV_DEBUG"):
            traceback.print_exc()
        ctx.exit(code)


@click.group(cls=BitconvGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bitconv")
def cli() -> None:
    """Convert, pack and verify 1.58-bit (BitNet b1.58) language models.

    Results go to stdout (a path, a table, a JSON object); progress and errors go to stderr.
    Exit status: 0 ok, 1 bad input or refused output, 2 usage error, 3 verification mismatch,
    4 network or hub failure during a pull (trying again may work).
    """
    from bitconv.workers import keep_freed_memory

    keep_freed_memory()


@cli.command()
@click.argument("src", type=click.Path(path_type=str))
@click.option("--format", "fmt", type=click.Choice(FORMAT_NAMES), default="i2s", show_default=True,
              help="Packed layout to write.")
@click.option("-o", "--out", type=click.Path(), default=None,
              help="Output file, or directory for --format hf "
                   "[default: ./<SRC name>-<format>.gguf, ./<SRC name>-hf/].")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@click.option("--scale-rule", type=click.Choice(["multiply", "divide"]), default=None,
              help="Override how weight_scale is applied (and skip its magnitude check); "
                   "by default multiply iff linear_class is autobitlinear.")
@click.option("--scale-stat", type=click.Choice(["mean", "median"]), default="mean",
              show_default=True,
              help="Ternarization scale of latent weights: mean |W| (BitNet b1.58) or median |W| "
                   "(BitNet b1.58 Reloaded, a research option: verify then reports the "
                   "multipliers as differing from the source's absmean).")
@click.option("-j", "--threads", type=click.IntRange(1, 64), default=None,
              help="Worker threads [default: one per core]. The output does not depend on it.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object (path, format, family, tensors, bytes) instead of the path.")
def pack(src: str, fmt: str, out: str | None, force: bool, scale_rule: str | None,
         scale_stat: str, threads: int | None, as_json: bool, quiet: bool) -> None:
    """Pack the checkpoint directory SRC into a GGUF file and print its path. SRC may also be
    a Hugging Face repo id (owner/name, not an existing path): it is pulled first, as by `pull`.

    \b
    Examples:
      bitconv pack ./bitnet-b1.58-2B-4T --format i2s
      bitconv pack microsoft/bitnet-b1.58-2B-4T
      bitconv pack ./Llama3-8B-1.58-100B-tokens -o llama3-i2s.gguf --force
    """
    from bitconv.stages.pack import pack as run

    res = run(src, format=fmt, out=out, force=force,
              scale_rule=scale_rule,  # type: ignore[arg-type]
              progress=not quiet and sys.stderr.isatty(), threads=threads,
              scale_stat=scale_stat)
    if as_json:
        import json

        click.echo(json.dumps({"path": str(res.path), "format": res.format, "family": res.family,
                               "tensors": res.tensors, "bytes": res.nbytes}, indent=2))
    else:
        click.echo(str(res.path))


@cli.command()
@click.argument("src", type=click.Path(path_type=str))
@click.option("--format", "fmt", type=click.Choice(FORMAT_NAMES), required=True,
              help="Packed layout to write.")
@click.option("-o", "--out", type=click.Path(), default=None,
              help="Output file, or directory for --format hf "
                   "[default: ./<general.name>-<format>.gguf, ./<general.name>-hf/].")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@click.option("--allow-lossy", is_flag=True,
              help="Let the -fp16 formats (tq1_0-fp16, tq2_0-fp16, q2_0-fp16) round multipliers "
                   "that fp16 cannot hold exactly (refused without it).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no note on stderr.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object (path, formats, tensors, bytes, loss) instead of the path.")
@KERNEL_CONFIG
def repack(src: str, fmt: str, out: str | None, force: bool, allow_lossy: bool, quiet: bool,
           as_json: bool, kernel_config: str | None) -> None:
    """Rewrite the packed model SRC in another format, without its source checkpoint, and print
    the output path. SRC is a GGUF file bitconv reads, or an `hf` directory (packed as by `pack`).

    Codes are always kept. Every format but tq1_0-fp16, tq2_0-fp16 and q2_0-fp16 also keeps each
    float32 multiplier exactly, so those repacks are lossless (`verify` of the output against the
    original checkpoint passes). The -fp16 variants round the multiplier to an fp16 block scale:
    they are refused, naming the first tensor that would change, unless every multiplier is
    exact in fp16 or --allow-lossy is given. A TL output gets its .kernel_config.ini beside it.

    --format hf rebuilds config.json and tokenizer files from the GGUF metadata; packing that
    directory gives the GGUF back byte for byte when the directory is named like the model
    (general.name is a directory's name): e.g. -o ./hf/bitnet-b1.58-2B-4T.

    \b
    Examples:
      bitconv repack bitnet-b1.58-2B-4T-i2s.gguf --format tq2_0
      bitconv repack m-tq2_0.gguf --format tq2_0-fp16 --allow-lossy -o m-fp16.gguf
      bitconv repack m-i2s.gguf --format hf -o ./hf/bitnet-b1.58-2B-4T
    """
    from bitconv.stages.repack import repack as run

    res = run(src, format=fmt, out=out, force=force, allow_lossy=allow_lossy,
              progress=not quiet and sys.stderr.isatty(), kernel_config=kernel_config)
    if res.max_error and not quiet:
        click.echo(f"note: {fmt} rounded multipliers: max relative weight error "
                   f"{res.max_error:.3g} in {res.worst}", err=True)
    if res.changed and not quiet:
        click.echo(f"note: packing {res.path} again changes GGUF keys: {', '.join(res.changed)}",
                   err=True)
    if as_json:
        import json

        click.echo(json.dumps({"path": str(res.path), "source_format": res.source_format,
                               "format": res.format, "tensors": res.tensors, "bytes": res.nbytes,
                               "lossless": res.max_error == 0, "max_error": res.max_error,
                               "worst": res.worst,
                               "sidecar": None if res.sidecar is None else str(res.sidecar),
                               "changed": list(res.changed)}, indent=2))
    else:
        click.echo(str(res.path))


@cli.command()
@click.argument("repo_id")
@click.option("--revision", default=None,
              help="Branch, tag or commit [default: main]; resolved to a commit sha and recorded.")
@click.option("--local-dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Write real files here instead of the Hugging Face cache.")
@click.option("--include", multiple=True, metavar="PATTERN",
              help="Fetch the files matching this glob (repeatable) instead of what conversion "
                   "needs (config, tokenizer, *.safetensors and index).")
@click.option("--offline", is_flag=True,
              help="Use only the cache (as HF_HUB_OFFLINE=1 does); name what is missing.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object (path, repo, sha, files with size and sha256).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def pull(repo_id: str, revision: str | None, local_dir: str | None, include: tuple[str, ...],
         offline: bool, as_json: bool, quiet: bool) -> None:
    """Download REPO_ID (owner/name) from the Hugging Face Hub at one commit, check every file
    against the hub's sha256 / size, and print the local directory.

    Honours HF_ENDPOINT, HF_HOME, HF_HUB_CACHE, HF_TOKEN, HF_HUB_OFFLINE, HF_HUB_ETAG_TIMEOUT and
    HF_HUB_DOWNLOAD_TIMEOUT. A second pull of a complete snapshot transfers no file contents.
    The manifest (repo, commit, files, sizes, sha256) is DIR/.bitconv-pull.json.

    \b
    Examples:
      bitconv pull microsoft/bitnet-b1.58-2B-4T
      bitconv pull microsoft/bitnet-b1.58-2B-4T-bf16 --revision main --local-dir ./bf16
      MODEL := $(shell bitconv pull microsoft/bitnet-b1.58-2B-4T)     # in a Makefile
    """
    from bitconv.stages.pull import pull as run

    snap = run(repo_id, revision=revision, local_dir=local_dir, include=include or None,
               offline=offline, progress=not quiet and sys.stderr.isatty())
    click.echo(snap.to_json() if as_json else str(snap.path))


@cli.command()
@click.argument("path", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of a table.")
@KERNEL_CONFIG
def inspect(path: str, as_json: bool, kernel_config: str | None) -> None:
    """Describe PATH: a checkpoint directory (family, dtypes, scale rule, shapes) or a GGUF
    file (arch, metadata, tensor table with type, format, shape and byte size). For a GGUF it
    says whether its ternary format keeps the float32 multipliers (lossless) or rounds them to
    fp16 (tq*_0-fp16), and then bounds the weight error from the file alone. For TL1/TL2 it
    names the kernel configuration the file is read with and the tiling of each shape.

    \b
    Examples:
      bitconv inspect ./bitnet-b1.58-2B-4T
      bitconv inspect bitnet-b1.58-2B-4T-i2s.gguf --json
    """
    from bitconv.stages.inspect import describe

    d = describe(path, kernel_config)
    click.echo(d.to_json() if as_json else d.to_text())


@cli.command()
@click.argument("packed", type=click.Path(path_type=str))
@click.option("--source", type=click.Path(path_type=str), default=None,
              help="The checkpoint directory PACKED was made from.")
@click.option("--tokens", type=click.IntRange(1, 4096), default=16, show_default=True,
              help="Length of the fixed token sequence whose logits are compared.")
@click.option("--scale-rule", type=click.Choice(["multiply", "divide"]), default=None,
              help="The --scale-rule PACKED was made with, if any.")
@click.option("--mode", type=click.Choice(MODES), default="exact", show_default=True,
              help="BitLinear numerics of the logits check (see `bitconv logits --help`).")
@click.option("--no-drift", is_flag=True,
              help="Skip the drift report against the source's unquantized weights.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object listing every finding (class, check, subject, numbers).")
@KERNEL_CONFIG
@MEMORY
def verify(packed: str, source: str | None, tokens: int, scale_rule: str | None, mode: str,
           no_drift: bool, as_json: bool, kernel_config: str | None, memory: int | None) -> None:
    """Audit PACKED, whoever wrote it, against the SOURCE it was made from.

    Every check runs: the container, every metadata key, every tensor bit for bit (codes and
    multiplier), and the runtime's logits for a fixed token sequence from the file and from the
    source. Each finding is one line with its class: `ok`; `info` (differs but computes the
    same, e.g. general.name, key or tensor order, a multiplier one float32 ulp off, a default
    the runtime fills in); `info loss` (a lossy -fp16 variant within its rounding); `FAIL`
    (changes what a runtime computes, e.g. a reciprocal multiplier, a flipped code, a head
    count). Exit 0 without FAIL, 3 otherwise (the first FAIL is named on stderr). Without
    --source only the container is checked. Where the source has unquantized weights (1bitLLM,
    2B4T -bf16), an `info` line tells how far the ternary logits drift from the float model's.

    \b
    Example:
      bitconv verify model-i2s.gguf --source ./bitnet-b1.58-2B-4T
    """
    from bitconv.errors import VerifyError
    from bitconv.stages.verify import verify as run

    report = run(packed, source=source, tokens=tokens, scale_rule=scale_rule,  # type: ignore[arg-type]
                 mode=mode, drift=not no_drift, kernel_config=kernel_config, memory=memory)
    click.echo(report.to_json() if as_json else report.to_text())
    if not report.ok:
        raise VerifyError(report.first_failure)


@cli.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("--tokens", "token_list", default=None,
              help="Comma-separated token ids, e.g. 1,15043,3186.")
@click.option("-p", "--prompt", default=None, help="Text to tokenize instead of --tokens.")
@click.option("-o", "--out", type=click.Path(), required=True,
              help="Output .npy file: float32 logits, shape (positions, vocab).")
@click.option("--mode", type=click.Choice(MODES), default="exact", show_default=True,
              help="BitLinear numerics: exact (per-token int8, the BitNet definition), "
                   "bitnet.cpp (its I2_S kernels and fp16 KV), llama.cpp (Q8_K blocks of 256).")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@RESEARCH
@KERNEL_CONFIG
@MEMORY
def logits(model: str, token_list: str | None, prompt: str | None, out: str, mode: str,
           force: bool, research: str | None, kernel_config: str | None,
           memory: int | None) -> None:
    """Save the logits of MODEL (a GGUF file or checkpoint directory) for every position of a
    token sequence, to compare bitconv with another engine on the same ids.

    \b
    Examples:
      bitconv logits model-i2s.gguf --tokens 768,72,101 -o ours.npy
      bitconv logits model-tq2_0.gguf -p "Hello world" --mode llama.cpp -o ours.npy
    """
    import numpy as np

    from bitconv.stages.logits import save_logits

    if (token_list is None) == (prompt is None):
        raise click.UsageError("give exactly one of --tokens and --prompt")
    ids = None
    if token_list is not None:
        try:
            ids = np.array([int(t) for t in token_list.split(",")], dtype=np.int64)
        except ValueError:
            raise click.BadParameter("expected comma-separated integers", param_hint="--tokens")
    click.echo(str(save_logits(model, out, ids=ids, prompt=prompt, mode=mode, force=force,
                               kernel_config=kernel_config, research=research,
                               memory=memory)))


@cli.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("-p", "--prompt", required=True, help="The text to continue.")
@click.option("-n", "--n-tokens", type=click.IntRange(0, 100000), default=32, show_default=True,
              help="How many tokens to generate at most.")
@click.option("--temperature", type=click.FloatRange(0), default=0.0, show_default=True,
              help="0 is greedy; above 0 samples from softmax(logits / T).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template.")
@click.option("--mode", type=click.Choice(MODES), default="exact", show_default=True,
              help="BitLinear numerics (see `bitconv logits --help`).")
@RESEARCH
@KERNEL_CONFIG
@MEMORY
def run(model: str, prompt: str, n_tokens: int, temperature: float, seed: int, chat: bool,
        mode: str, research: str | None, kernel_config: str | None, memory: int | None) -> None:
    """Generate text from MODEL (a packed GGUF file or a checkpoint directory) with the
    reference runtime, streaming the new text to stdout.

    The tokenizer comes from the checkpoint's files, or is rebuilt from the GGUF metadata.
    Generation stops after N tokens or at an end-of-generation token.

    \b
    Examples:
      bitconv run model-i2s.gguf -p "The capital of France is" -n 16
      bitconv run ./bitnet-b1.58-2B-4T -p "Write a haiku" --chat --temperature 0.7 --seed 1
    """
    from bitconv.runtime.generate import stream_text

    for piece in stream_text(model, prompt, n_tokens, temperature=temperature, seed=seed,
                             chat=chat, mode=mode, kernel_config=kernel_config,
                             research=research, memory=memory):
        click.echo(piece, nl=False)
    click.echo()


@cli.command(name="eval")
@click.argument("model", type=click.Path(path_type=str))
@click.option("--text", "text", type=click.Path(path_type=str), required=True,
              help="A UTF-8 text file (at least 2·CTX tokens).")
@click.option("--ctx", type=click.IntRange(4), default=512, show_default=True,
              help="Chunk length in tokens; the second half of each chunk is scored.")
@click.option("--chunks", type=click.IntRange(1), default=None,
              help="Evaluate at most this many chunks (llama.cpp's --chunks) [default: all].")
@click.option("--mode", type=click.Choice(MODES), default="exact", show_default=True,
              help="BitLinear numerics (see `bitconv logits --help`).")
@RESEARCH
@click.option("--json", "as_json", is_flag=True, help="One JSON object, per-chunk values included.")
@KERNEL_CONFIG
@MEMORY
def eval_(model: str, text: str, ctx: int, chunks: int | None, mode: str, research: str | None,
          as_json: bool, kernel_config: str | None, memory: int | None) -> None:
    """Perplexity of MODEL (a GGUF file or checkpoint directory) on a text, computed as
    llama.cpp's perplexity tool does: BOS + the text, chunks of CTX tokens each starting with
    BOS, the second half of each chunk scored. A progress bar goes to stderr.

    \b
    Examples:
      bitconv eval model-i2s.gguf --text wiki.test.raw --ctx 512
      bitconv eval model-tq2_0.gguf --text held-out.txt --mode llama.cpp --json
    """
    import json

    from bitconv.stages.eval import evaluate

    r = evaluate(model, text, ctx=ctx, mode=mode, progress=True, chunks=chunks,
                 kernel_config=kernel_config, research=research, memory=memory)
    if as_json:
        click.echo(json.dumps(r.to_json(), indent=2))
        return
    click.echo("".join(f"[{c.index}]{c.ppl_running:.4f}," for c in r.chunks))
    click.echo(f"PPL = {r.ppl:.4f} +/- {r.ppl_error:.5f}  ({len(r.chunks)} chunks of {r.ctx}, "
               f"{r.scored} of {r.tokens} tokens scored, {r.mode} mode)")


@cli.command()
@click.argument("recipe", type=click.Path(path_type=str))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Release directory [default: ./release/<recipe name>].")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Formats packed and verified in parallel (the bytes do not depend on it).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the path.")
def release(recipe: str, out: str | None, jobs: int, as_json: bool) -> None:
    """Pull RECIPE's pinned repo, pack every listed format, verify each, and write
    MANIFEST.json and SHA256SUMS beside the artifacts; print the release directory.

    Up-to-date artifacts are kept, not rebuilt. A failing verify exits 3 and publishes nothing.

    \b
    Example:
      bitconv release recipes/bitnet-b1.58-2B-4T.toml -j2
    """
    from bitconv.stages.release import release as run

    res = run(recipe, out=out, jobs=jobs, progress=sys.stderr.isatty())
    click.echo(res.to_json() if as_json else str(res.out))


@cli.group()
def recipe() -> None:
    """Recipes: one TOML file per real model (recipes/*.toml)."""


@recipe.command(name="lock")
@click.argument("path", type=click.Path(path_type=str))
def recipe_lock(path: str) -> None:
    """Pull the recipe's revision and record the resolved commit sha and the input files'
    sha256 in the recipe file; print the sha."""
    from bitconv.stages.pull import pull
    from bitconv.stages.recipes import load_recipe, lock

    r = load_recipe(path)
    snap = pull(r.repo, revision=r.revision)
    lock(r, snap.sha, {f.path: f.sha256 for f in snap.files if f.sha256})
    click.echo(snap.sha)


@recipe.command(name="check")
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
def recipe_check(paths: tuple[str, ...]) -> None:
    """Validate recipe files (default: recipes/*.toml); print each name."""
    from bitconv.stages.recipes import find_recipes, load_recipe

    for p in paths or tuple(str(p) for p in find_recipes()):
        click.echo(load_recipe(p).name)


@cli.command(name="make-fixture", hidden=False)
@click.argument("name")
@click.argument("dst", type=click.Path(file_okay=False))
def make_fixture(name: str, dst: str) -> None:
    """Write the tiny synthetic checkpoint NAME (a real repo's exact layout) into DST.

    NAME is one of: bitnet_b1_58-large, bitnet-b1.58-2B-4T, bitnet-b1.58-2B-4T-bf16,
    Llama3-8B-1.58-100B-tokens. Used by the tests, `make demo` and the benchmarks.
    """
    from bitconv.synth.checkpoints import FIXTURES
    from bitconv.synth.checkpoints import make_fixture as run

    if name not in FIXTURES:
        raise click.BadParameter(f"choose one of: {', '.join(FIXTURES)}", param_hint="NAME")
    click.echo(str(run(name, dst)))


def main() -> None:
    cli(prog_name="bitconv")
