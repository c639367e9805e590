"""The suite's figures from the workers' raw measurements, and RESULTS.md.

Every timing arrives as seconds per call, one value per interleaved round; a ratio of two timings is taken round by
round and reported as its median with the min-max over the rounds ("3.74x (3.61-4.41)"). Absolute timings become
`torch.utils.benchmark.Measurement`s (median, IQR) and one `Compare` table.
"""

from __future__ import annotations

from statistics import median

MIB = 2**20


def ratio(numerator: list[float], denominator: list[float]) -> dict:
    """Round-by-round ratios of two interleaved timings: median, min, max."""
    values = [a / b for a, b in zip(numerator, denominator, strict=True)]
    return {"median": median(values), "min": min(values), "max": max(values)}


def mib(value: float) -> str:
    return f"{value / 1024:,.0f} KiB" if 0 < abs(value) < MIB else f"{value / MIB:,.0f} MiB"


def figure(key, measurement, part="", peer="", value=None, target="", met=None, fmt="{:.2f}x") -> dict:
    """One row of the results table. `value`: a ratio dict (median, min, max) or a single number; `met`: the test
    of the target, given `value`."""
    spread = isinstance(value, dict)
    return {"key": key, "measurement": measurement, "part": part, "peer": peer, "value": value,
            "text": "" if value is None else fmt.format(value["median"] if spread else value),
            "range": "-".join(fmt.format(value[k]).removesuffix("x") for k in ("min", "max")) if spread
            else "" if value is None else "-",
            "target": target, "met": None if met is None or value is None else bool(met(value))}


def figures(raw: dict) -> list[dict]:
    """The results table, from the workers' outputs (sections that did not run are left out)."""
    models = raw.get("models", {})
    dims, setup = models.get("dims", {}), models.get("setup", {})
    rows = []
    add = rows.append
    train = models.get("train")
    if train:
        t = train["times"]
        per_s = {name: dims["batch_size"] / median(t[name]) for name in ("part", "peer", "collator")}
        add(figure("train_throughput", "train step throughput (PART/peer)", f"{per_s['part']:.2f} samples/s",
                   f"{per_s['peer']:.2f} samples/s", ratio(t["peer"], t["part"]), ">= 3.0x",
                   lambda r: r["median"] >= 3.0))
    memory = {(m["variant"], m["llm_frozen"]): m for m in raw.get("memory", []) if "variant" in m}

    def peak(variant, frozen=False):  # peak RSS above the interpreter + libraries: model, batch, step
        m = memory.get((variant, frozen))
        return m and m["process_peak"] - m["rss_after_imports"]

    part, peer = memory.get(("part", False)), memory.get(("peer", False))
    if part and peer:
        add(figure("train_peak_memory", "train step peak memory (PART/peer)", mib(peak("part")), mib(peak("peer")),
                   peak("part") / peak("peer"), "<= 0.5x", lambda r: r <= 0.5))
        add(figure("train_process_peak", "  same, whole-process RSS (incl. libraries)", mib(part["process_peak"]),
                   mib(peer["process_peak"]), part["process_peak"] / peer["process_peak"], "(context)"))
        add(figure("train_step_memory", "  same, step high-water above pre-step RSS", mib(part["step"]["delta"]),
                   mib(peer["step"]["delta"]), part["step"]["delta"] / peer["step"]["delta"], "(context)"))
    if train:
        step = {name: m["delta"] for name, m in train["step_memory"].items()}
        add(figure("train_step_memory_in_process", "  same, step high-water in the timing process (cross-check)",
                   mib(step["part"]), mib(step["peer"]), step["part"] / step["peer"], "(context)"))
    if train and "part_full_logits" in train["times"]:
        t = train["times"]
        add(figure("ablation_target_only_head", "  ablation: target-only head (PART/PART full logits)",
                   f"{median(t['part']):.2f} s/step", f"{median(t['part_full_logits']):.2f} s/step (full logits)",
                   ratio(t["part_full_logits"], t["part"]), "(context)"))
        rate = setup["audio_token_rate"]
        add(figure("ablation_audio_token_rate", "  ablation: fewer audio positions (PART full logits/peer)",
                   f"{rate['part']:.2f} audio positions/s", f"{rate['peer']:.2f}/s",
                   ratio(t["peer"], t["part_full_logits"]), "(context)"))
    if part and peak("part_full_logits"):
        add(figure("ablation_target_only_head_memory", "  ablation: target-only head, peak memory",
                   mib(peak("part")), f"{mib(peak('part_full_logits'))} (full logits)",
                   peak("part") / peak("part_full_logits"), "(context)"))
    frozen = (train or {}).get("llm_frozen")
    if frozen:
        t = frozen["times"]
        add(figure("llm_frozen_throughput", "train step, LLM frozen: throughput", f"{median(t['part']):.2f} s/step",
                   f"{median(t['peer']):.2f} s/step", ratio(t["peer"], t["part"]), "(context)"))
    if peak("part", frozen=True) and peak("peer", frozen=True):
        add(figure("llm_frozen_peak_memory", "train step, LLM frozen: peak memory", mib(peak("part", True)),
                   mib(peak("peer", True)), peak("part", True) / peak("peer", True), "<= 0.35x",
                   lambda r: r <= 0.35))
        step = {name: memory[(name, True)]["step"]["delta"] for name in ("part", "peer")}
        add(figure("llm_frozen_step_memory", "  same, step high-water above pre-step RSS", mib(step["part"]),
                   mib(step["peer"]), step["part"] / step["peer"], "(context)"))
    generate = models.get("generate")
    if generate:
        t, n = generate["times"], generate["new_tokens"]
        tokens, audio = dims["batch_size"] * n, dims["batch_size"] * dims["seconds"]
        decode = {name: (median(t[name]) - median(t[f"{name}_prefill"])) / (n - 1) for name in ("part", "peer")}
        add(figure("generation_throughput", f"generation new tokens/s (PART/peer, {n} tokens per clip)",
                   f"{tokens / median(t['part']):.1f} tok/s", f"{tokens / median(t['peer']):.1f} tok/s",
                   ratio(t["peer"], t["part"]), ">= 1.5x", lambda r: r["median"] >= 1.5))
        if "part_beam" in t:  # runs before the beam timings were added have none
            add(figure("generation_beam_throughput", f"  same, beam search ({generate['beams']} beams)",
                       f"{tokens / median(t['part_beam']):.1f} tok/s", f"{tokens / median(t['peer_beam']):.1f} tok/s",
                       ratio(t["peer_beam"], t["part_beam"]), "(context)"))
        add(figure("generation_rtf", "  real-time factor (lower is faster)", f"{median(t['part']) / audio:.3f}",
                   f"{median(t['peer']) / audio:.3f}", target="(context)"))
        add(figure("generation_prefill", "  prefill (generate 1 token)", f"{median(t['part_prefill']):.2f} s",
                   f"{median(t['peer_prefill']):.2f} s", ratio(t["peer_prefill"], t["part_prefill"]), "(context)"))
        # from medians: single-round differences of two noisy timings can even be negative on a busy machine
        add(figure("generation_decode_step", "  decode step ((full - prefill) / (tokens - 1), medians)",
                   f"{decode['part'] * 1000:.0f} ms", f"{decode['peer'] * 1000:.0f} ms",
                   decode["peer"] / decode["part"] if decode["part"] > 0 else None, "(context)"))
    frontend = models.get("frontend")
    if frontend:
        t = frontend["times"]
        rate = {name: frontend["audio_seconds"] / median(values) for name, values in t.items()}
        for name, label in (("part_asrfront", "asrfront"), ("part_numpy", "numpy")):
            for whisper, padding in (("whisper_longest", ""), ("whisper_30s", ", 30 s padding")):
                add(figure(f"front_end_{label}_vs_{whisper}", f"front end audio s/s: ours ({label}) / Whisper FE"
                           f"{padding}", f"{rate[name]:.0f} s/s", f"{rate[whisper]:.0f} s/s",
                           ratio(t[whisper], t[name]), "(context)"))
    if train:
        t = train["times"]
        add(figure("front_end_share", "front end share of a train step", f"{median(t['front_end']) * 1000:.0f} "
                   "ms/batch", f"{median(t['part']):.2f} s/step", ratio(t["front_end"], t["part"]), "< 5%",
                   lambda r: r["median"] < 0.05, "{:.1%}"))
        add(figure("loader_ratio", "collator samples/s / step samples/s", f"{per_s['collator']:.0f} samples/s",
                   f"{per_s['part']:.2f} samples/s", ratio(t["part"], t["collator"]), "> 1x (never starve)",
                   lambda r: r["min"] > 1.0, "{:.1f}x"))
    zero3 = raw.get("zero3")
    if zero3 and "error" not in zero3:
        held = [p + q for p, q in zip(zero3["parameter_bytes_partition"], zero3["parameter_bytes_persistent"])]
        total = zero3["parameter_bytes_total"][0]
        add(figure("zero3_held_fraction", f"ZeRO-3 x{zero3['world_size']}: parameter bytes per rank / total",
                   mib(max(held)), mib(total), max(held) / total, "<= 0.55 (1/2 + 10%)",
                   lambda r: r * zero3["world_size"] <= 1.10, "{:.3f}"))
        state = zero3["optimizer_state_bytes"]
        add(figure("zero3_optimizer_state", "  optimizer state per rank (fp32 partitions + Adam) / one process",
                   mib(max(state)), mib(zero3["single_optimizer_state_bytes"]),
                   max(state) / zero3["single_optimizer_state_bytes"], "(context)"))
        t = zero3["times"]
        add(figure("zero3_step_time", f"ZeRO-3 x{zero3['world_size']} step time / one process",
                   f"{median(t['zero3']):.2f} s", f"{median(t['single']):.2f} s", ratio(t["zero3"], t["single"]),
                   "(context)"))
    elif zero3:
        add(figure("zero3", "ZeRO-3", "error: " + zero3["error"]))
    rows.extend(batching_figures(raw.get("batching")))
    return rows


def batching_figures(batching: dict | None) -> list[dict]:
    """The `batching` section: padded shares, and audio seconds per second at equal peak memory."""
    if not batching:
        return []
    if "error" in batching:
        return [figure("batching", "token-budget batching", "error: " + batching["error"])]
    padding, rates, size = batching["padding"], batching["rates"], batching["fixed_batch_size"]
    share = {kind: f"{padding[kind]['together']:.1%}" for kind in padding}
    rows = [figure("batching_padding_share", f"padded encoder frames + LLM positions, token budget of "
                   f"{batching['max_tokens']} (fixed {batching['padding_batch_size']}: plain / length-grouped)",
                   share["budget"], f"{share['fixed']} / {share['grouped']}", padding["budget"]["together"],
                   "<= 0.10", lambda r: r <= 0.10, "{:.3f}")]
    speed = {kind: f"{median(values):.1f} audio s/s" for kind, values in rates.items()}
    rows.append(figure("batching_throughput", f"audio s/s at equal peak memory: token budget / fixed batches of {size}",
                       speed["budget"], speed["fixed"], ratio(rates["budget"], rates["fixed"]), ">= 1.5x",
                       lambda r: r["median"] >= 1.5))
    rows.append(figure("batching_throughput_grouped", f"  same, fixed batches of {size} length-grouped",
                       speed["budget"], speed["grouped"], ratio(rates["budget"], rates["grouped"]), "(context)"))
    for kind, name in (("budget", "token-budget"), ("fixed", f"fixed {batching['padding_batch_size']} in draw order")):
        times = batching.get("packing", {}).get(kind)
        if times:  # a what-if: PART pads; < 1 would mean padding-free packing of the LLM input pays
            rows.append(figure(f"batching_packing_{kind}", f"LLM step time, packed (padding-free) / padded: {name} "
                               "batches", f"{median(times['packed']):.2f} s", f"{median(times['padded']):.2f} s",
                               ratio(times["packed"], times["padded"]), "what-if (< 1: packing pays)"))
    return rows


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def results_table(rows: list[dict]) -> str:
    met = {True: "yes", False: "NO", None: ""}
    return table(["measurement", "PART", "peer / reference", "ratio (median)", "min-max", "target", "met"],
                 [[r["measurement"], r["part"], r["peer"], r["text"], r["range"], r["target"], met[r["met"]]]
                  for r in rows])


def measurements(raw: dict, threads: int) -> list:
    """Every timing of the run as a `torch.utils.benchmark.Measurement` (one value per round)."""
    from torch.utils.benchmark import Measurement, TaskSpec

    models, out = raw.get("models", {}), []

    def add(label, sub_label, times: dict, names: dict):
        for name, description in names.items():
            if name in times:
                spec = TaskSpec(stmt=name, setup="", label=label, sub_label=sub_label, description=description,
                                num_threads=threads)
                out.append(Measurement(number_per_run=1, raw_times=times[name], task_spec=spec))

    models_names = {"part": "PART", "peer": "peer", "part_full_logits": "PART, full logits"}
    if "train" in models:
        dims = models["dims"]
        label = f"train step (batch {dims['batch_size']} x {dims['seconds']:g} s)"
        add(label, "all trainable", models["train"]["times"], models_names)
        add(label, f"collator ({dims['batch_size']} WAV samples)", models["train"]["times"], {"collator": "PART"})
        add(label, "front end (batch)", models["train"]["times"], {"front_end": "PART"})
        if "llm_frozen" in models["train"]:
            add(label, "LLM frozen", models["train"]["llm_frozen"]["times"], models_names)
    if "generate" in models:
        times = models["generate"]["times"]
        add("generation", f"{models['generate']['new_tokens']} new tokens", times, {"part": "PART", "peer": "peer"})
        add("generation", "prefill (1 token)", times, {"part_prefill": "PART", "peer_prefill": "peer"})
        if "part_beam" in times:
            add("generation", f"{models['generate']['new_tokens']} new tokens, {models['generate']['beams']} beams",
                times, {"part_beam": "PART", "peer_beam": "peer"})
    for name, values in models.get("frontend", {}).get("times", {}).items():
        add("front end (batch)", name, {name: values}, {name: "time per call"})
    for axis in raw.get("scaling", []):
        for point in axis.get("points", []):
            for name in ("part", "peer"):
                if name in point:
                    add(f"scaling: {axis['axis']}", f"{point['value']:g}", {name: point[name]["times"]},
                        {name: models_names[name]})
    if raw.get("zero3", {}).get("times"):
        add("ZeRO-3 step (forward + backward + AdamW)", "global batch", raw["zero3"]["times"],
            {"zero3": f"ZeRO-3 x{raw['zero3']['world_size']}", "single": "one process"})
    return out


# ------------------------------------------------------------------------------------------------ RESULTS.md
def results_markdown(raw: dict, rows: list[dict], meta: dict, compare: str) -> str:
    machine, load, models = meta["machine"], meta["load_average"], raw.get("models", {})
    dims, setup = models.get("dims") or {}, models.get("setup") or {}
    others = load["others_mean_estimate"]
    quiet = others is not None and others <= 0.5  # not the start load: it holds make bench's own install step
    out = [
        "# PART benchmarks\n",
        f"Measured with `{meta['make_target']}` (`{meta['command']}`) on {meta['date']}; the run took "
        f"{meta['duration_s'] / 60:.1f} min. Regenerate with `make bench`; `--quick` gives a smoke run.\n",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB RAM, "
        f"{machine['platform']}; Python {machine['python']}, torch {machine['torch']}, transformers "
        f"{machine['transformers']}, deepspeed {machine['deepspeed']}, asrfront {machine['asrfront']}. Torch threads "
        f"per process: {machine['torch_threads']}, OMP_WAIT_POLICY={machine['omp_wait_policy']} (passive waiting keeps "
        "a shared machine's descheduled threads from stalling every parallel region; it applies to every variant).",
        f"- Load average (1 min) {load['start'][0]:.2f} at the start, {load['end'][0]:.2f} at the end; sampled every "
        f"5 s: mean {load['samples_mean']:.2f}, min {load['samples_min']:.2f}, max {load['samples_max']:.2f} on "
        f"{load['cores']} cores, of which the suite's own processes used {load['suite_cores_mean']:.2f}. Per section "
        "(mean, max, duration): " + ", ".join(f"{name} {v['mean']:.1f}, {v['max']:.1f}, {v['seconds']:.0f} s"
                                              for name, v in load["per_section"].items()) + ".",
        "- " + ("The machine was quiet." if quiet else "**The machine was busy during this run** (other work averaged "
                f"about {max(others or 0, 0):.2f} cores): absolute times are inflated and noisy; the ratios, taken "
                "round by round with PART and the peer side by side, are the figures to read, their min-max the "
                "noise band."),
        "\n## Results (ratios are PART / peer, measured side by side)\n",
        results_table(rows),
    ]
    if dims and setup:
        prompt = models.get("generate", {}).get("prompt_length")
        out += ["\n## Setup\n", SETUP.format(
            **dims, **setup, ffn=dims["llm_width"] // 4, swiglu=4 * dims["llm_width"],
            part_m=setup["parameters"]["part"] / 1e6, peer_m=setup["parameters"]["peer"] / 1e6,
            part_attention=", ".join(setup["attention"]["part"]), peer_attention=", ".join(setup["attention"]["peer"]),
            prompt=f"; generation prompt length PART {prompt['part']}, peer {prompt['peer']}" if prompt else "",
            beams=f" and beam search ({beams} beams)" if (beams := models.get("generate", {}).get("beams")) else "")]
    memory = [m for m in raw.get("memory", []) if "variant" in m]
    if memory:
        out += ["\n## Peak memory, one fresh process per variant\n", table(
            ["variant", "LLM", "RSS after imports", "after build (model + batch)", "process peak", "peak - imports",
             "step high-water above pre-step RSS"],
            [[m["variant"],
              "frozen" if m["llm_frozen"] else "trainable", mib(m["rss_after_imports"]), mib(m["rss_after_build"]),
              mib(m["process_peak"]), mib(m["process_peak"] - m["rss_after_imports"]), mib(m["step"]["delta"])]
             for m in memory])]
        if dims and setup:
            vocab, width = dims["vocab_size"], dims["llm_width"]
            targets = dims["batch_size"] * setup["loss_positions_per_clip"]
            positions = dims["batch_size"] * setup["sequence_length"]["peer"]
            out.append(f"\nVocabulary-sized tensors (fp32): the tied {vocab:,} x {width} embedding/LM head "
                       f"{mib(4 * vocab * width)}, its gradient as much again; logits over PART's {targets} target "
                       f"positions {mib(4 * vocab * targets)}, over the peer's {positions} positions "
                       f"{mib(4 * vocab * positions)}.")
    scaling = [(axis["axis"], point) for axis in raw.get("scaling", []) for point in axis.get("points", [])]
    if scaling:
        out += ["\n## Scaling\n", "Training step (forward + backward, all parameters trainable) as the clip length "
                "and the vocabulary grow; all points of an axis run interleaved in the same rounds, so the growth "
                "against the first point is a per-round ratio too. Step memory: RSS high-water above the RSS before "
                "the step, in the worker process.\n"]
        first, rows_ = {}, []
        for axis, point in scaling:
            first.setdefault(axis, point)
            cells = [axis, f"{point['value']:g} s" if axis == "seconds" else f"{point['value']:,.0f}"]
            for name in ("part", "peer"):
                if name in point and name in first[axis]:
                    growth = ratio(point[name]["times"], first[axis][name]["times"])["median"]
                    cells += [point["sequence_length"][name], f"{growth:.2f}x", mib(point[name]["step_memory"])]
                else:
                    cells += ["-", "-", "-"]
            if "peer" in point:
                speed = ratio(point["peer"]["times"], point["part"]["times"])
                cells += [f"{speed['median']:.2f}x ({speed['min']:.2f}-{speed['max']:.2f})",
                          f"{point['part']['step_memory'] / point['peer']['step_memory']:.2f}x"]
            else:
                cells += ["-", "-"]
            rows_.append(cells)
        out.append(table(["axis", "value", "PART seq", "PART time vs first", "PART step memory", "peer seq",
                          "peer time vs first", "peer step memory", "throughput ratio (min-max)",
                          "step memory ratio"], rows_))
    zero3 = raw.get("zero3")
    if zero3 and "error" not in zero3:
        zero, config = zero3["config"]["zero_optimization"], zero3["config"]
        out += ["\n## DeepSpeed ZeRO-3, 2 ranks on CPU\n", ZERO3.format(
            ranks=zero3["world_size"], stage=zero["stage"], bucket=zero["reduce_bucket_size"],
            prefetch=zero["stage3_prefetch_bucket_size"], threshold=zero["stage3_param_persistence_threshold"],
            micro=config["train_micro_batch_size_per_gpu"], clip=config["gradient_clipping"],
            partition=", ".join(mib(b) for b in zero3["parameter_bytes_partition"]),
            persistent=", ".join(mib(b) for b in zero3["parameter_bytes_persistent"]),
            zero3_losses=", ".join(f"{v:.4f}" for v in zero3["losses"]["zero3"]),
            single_losses=", ".join(f"{v:.4f}" for v in zero3["losses"]["single"]))]
    elif zero3:
        out += ["\n## DeepSpeed ZeRO-3, 2 ranks on CPU\n", f"Failed: {zero3['error']}\n\n```\n{zero3['log_tail']}\n```"]
    if compare:
        out += ["\n## Timings\n", "`torch.utils.benchmark.Compare` of every timing: median seconds per call over the "
                "interleaved rounds (the IQR of each is in results.json).\n", f"```text\n{compare}\n```"]
    profile = models.get("profile")
    if profile:
        out.append("\n## Where the time goes (torch.profiler, one training step each)\n")
        for name, p in profile.items():
            parts = ", ".join(f"{k} {v:.2f} s" for k, v in p["breakdown"]["forward_parts_s"].items())
            out += [f"**{'PART' if name == 'part' else 'Peer'}**: forward {p['breakdown']['forward_s']:.2f} s "
                    f"({parts}), backward {p['breakdown']['backward_s']:.2f} s (timed without the profiler).\n",
                    f"```text\n{p['train_step'].strip()}\n```\n"]
            if "generate" in p:
                out += [f"Generation ({name}):\n", f"```text\n{p['generate'].strip()}\n```\n"]
    return "\n".join(out).rstrip() + "\n"


SETUP = """\
- Peer: `transformers.FunAsrNanoForConditionalGeneration`, built at the same dimensions as PART: SenseVoice-style \
encoder (`fun_asr_nano_encoder`, width {encoder_width}, {encoder_layers} layers, {encoder_heads} heads), adaptor \
width {llm_width} with {adapter_layers} Transformer layers (feed-forward {ffn}, relu: the peer's config fixes both, \
PART's adapter gets the same), the same qwen2 LLM (width {llm_width}, {llm_layers} layers, {llm_heads} heads / \
{llm_kv_heads} KV heads, SwiGLU {swiglu}, tied embeddings), vocabulary {vocab_size:,}; fp32 on CPU. Parameters: PART \
{part_m:.1f} M, peer {peer_m:.1f} M. Attention: PART {part_attention}; peer {peer_attention}. In the timing \
processes the peer shares PART's encoder, LLM body and tied LM head modules (same classes, same configs, same \
tensors): only the adaptors differ, so the timings compare the models' structure, not where two copies of a 300 MB \
embedding were placed. The memory processes build each model on its own.
- Batch: {batch_size} clips of {seconds:g} s (speech-like synthetic audio), {feature_frames_per_clip} LFR feature \
frames of 560 values per clip from `PartFeatureExtractor` for both models; the same tokenizer, prompt template and \
target ({target_tokens} tokens + eos = {loss_positions_per_clip} loss positions per clip). Audio positions per clip \
in the LLM: PART {audio_positions_per_clip[part]} (conv1d stride 2), peer {audio_positions_per_clip[peer]} (one per \
LFR frame); LLM sequence length PART {sequence_length[part]}, peer {sequence_length[peer]}{prompt}.
- Training step: forward + backward from `zero_grad(set_to_none=True)`, all parameters trainable unless "LLM frozen" \
(the trainable set of PART's stages 1-2: encoder + adapter); no optimizer step (ZeRO-3 includes AdamW). PART \
computes the LM head on target positions only; the peer computes full logits and transformers' causal-LM loss. "Full \
logits" is PART with the peer's loss path. Generation: batched greedy decoding{beams}, \
`min_new_tokens = max_new_tokens`, KV cache, features precomputed.
- Timing (`common.interleave`): both models in one process with the same threads and inputs; after one warm-up call \
each, every round runs every variant once, alternating the order (A B, B A, ...); front-end and collator calls \
(milliseconds) are timed per round with `torch.utils.benchmark.Timer.blocked_autorange(min_run_time=0.2)`, the \
steps and generations (seconds) once per round. Ratios are per round. Collator: `trainers.PartDataCollator` \
from undecoded 16-bit WAV bytes (decode, features, prompt, tokens, labels, padding).
- Peak memory: one fresh process per variant. Headline = peak RSS minus the RSS after imports (model, gradients, \
batch, activations; not the interpreter and libraries, identical for both). The whole-process peak and the step's \
own high-water mark above the RSS before it (gradients dropped, allocator caches released via `malloc_trim`) are \
context."""

ZERO3 = """\
`python -m torch.distributed.run --standalone --nproc_per_node {ranks} benchmarks/bench_zero3.py` (gloo), \
`deepspeed.initialize` with `examples/configs/ds_zero3.json`, its "auto" entries filled by transformers' \
`HfTrainerDeepSpeedConfig` from the Trainer's arguments (stage {stage}, fp32, reduce_bucket_size {bucket}, prefetch \
{prefetch}, persistence threshold {threshold}, micro batch {micro}, clipping {clip}), torch AdamW, 1 thread per \
rank. The one-process reference is plain PyTorch with the whole batch, 2 threads, AdamW, run in the same launch on \
rank 0 and interleaved with the ZeRO-3 steps. On one machine ZeRO-3 cannot be faster: the same arithmetic on the \
same cores plus the all-gathers and reduce-scatters through gloo; the step-time ratio measures that overhead.

- Parameter bytes held per rank: partitions {partition}, parameters kept whole (below the persistence threshold) \
{persistent}.
- Losses (sanity): ZeRO-3 rank 0 {zero3_losses}; one process {single_losses}."""
