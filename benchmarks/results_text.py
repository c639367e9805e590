"""Writes benchmarks/RESULTS.md from the suite's measurements (all prose is derived from the numbers of the run)."""

from __future__ import annotations

MIB = 2**20
BYTES_FP32 = 4


def _mib(value: float) -> str:
    if 0 < value < MIB:
        return f"{value / 1024:,.0f} KiB"
    return f"{value / MIB:,.0f} MiB"


def _r(summary, digits: int = 2) -> str:
    if summary is None:
        return "n/a"
    if isinstance(summary, dict):
        return f"{summary['median']:.{digits}f}x (min {summary['min']:.{digits}f}, max {summary['max']:.{digits}f})"
    return f"{summary:.{digits}f}x"


def _s(summary) -> str:
    return f"{summary['median']:.2f} s (min {summary['min']:.2f}, max {summary['max']:.2f}, n={summary['n']})"


def _ops_table(ops: list[dict]) -> str:
    lines = ["| operator | self CPU s | share | calls |", "|---|---|---|---|"]
    lines += [f"| `{o['op']}` | {o['self_cpu_s']:.3f} | {o['share'] * 100:.1f}% | {o['calls']} |" for o in ops]
    return "\n".join(lines)


def _busy_note(load: dict) -> str:
    cores = load["cores"]
    mean, peak = load.get("samples_mean") or 0.0, load.get("samples_max") or 0.0
    suite = load.get("suite_cores_mean")
    others = load.get("others_mean_estimate")
    own = (f" The suite's own processes used {suite:.2f} cores on average, so other work on the machine averaged "
           f"about {max(others, 0):.2f}." if suite is not None and others is not None else "")
    if others is not None and others <= 0.5 and load["start"][0] <= 1.0:
        return (f"The machine was quiet: 1-minute load {load['start'][0]:.2f} before the start, mean {mean:.2f} "
                f"(max {peak:.2f}) during the run on {cores} cores.{own}")
    return (f"**The machine was busy during this run** (other engineers' tests share it): 1-minute load "
            f"{load['start'][0]:.2f} before the start, mean {mean:.2f} and max {peak:.2f} during the run, on {cores} "
            f"cores.{own} Absolute times are inflated and noisy; the ratios are taken round by round (PART and peer "
            "side by side in the same process, alternating order), so they are the figures to read, with their "
            "min/max as the noise band.")


def results_markdown(raw: dict, summary: dict, meta: dict, table: str) -> str:
    machine, load = meta["machine"], meta["load_average"]
    models = raw.get("models", {})
    setup = models.get("setup", {})
    dims = models.get("dims") or {}
    out: list[str] = []
    add = out.append

    add("# PART benchmarks\n")
    add(f"Measured with `{meta['make_target']}` (`{meta['command']}`) on {meta['date']}; the run took "
        f"{meta['duration_s'] / 60:.1f} min. Regenerate with `make bench`; `--quick` gives a smoke run.\n")
    add("## Machine\n")
    add(f"- CPU: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB RAM; "
        f"torch threads per process: {machine['torch_threads']}, "
        f"OMP_WAIT_POLICY={machine.get('omp_wait_policy')} (passive waiting keeps a shared machine's descheduled "
        "threads from stalling every parallel region; it applies to every variant alike)")
    add(f"- Python {machine['python']}, torch {machine['torch']}, transformers {machine['transformers']}, "
        f"deepspeed {machine['deepspeed']}, asrfront {machine['asrfront']}")
    add(f"- Platform: {machine['platform']}")
    add(f"- Load average (1/5/15 min) at start {' '.join(f'{v:.2f}' for v in load['start'])}, at end "
        f"{' '.join(f'{v:.2f}' for v in load['end'])}; sampled every 5 s during the run: mean "
        f"{(load.get('samples_mean') or 0):.2f}, min {(load.get('samples_min') or 0):.2f}, max "
        f"{(load.get('samples_max') or 0):.2f}.")
    per_section = ", ".join(f"{name} {v['mean']:.1f} (max {v['max']:.1f}, {v['seconds']:.0f} s)"
                            for name, v in load.get("per_section", {}).items())
    add(f"- Per section (mean load, max, duration): {per_section}")
    add(f"\n{_busy_note(load)}\n")

    add("## Results (ratios are PART / peer, measured side by side)\n")
    add(table)
    add("")
    add(_targets_paragraph(summary))

    add("\n## Setup\n")
    if dims:
        add(f"- Peer: `transformers.FunAsrNanoForConditionalGeneration`, built at the same dimensions as PART: "
            f"SenseVoice-style encoder (`fun_asr_nano_encoder`, width {dims['encoder_width']}, "
            f"{dims['encoder_layers']} layers, {dims['encoder_heads']} heads), adaptor width {dims['llm_width']} "
            f"with {dims['adapter_layers']} Transformer layers (feed-forward {dims['llm_width'] // 4}, relu: the "
            f"peer's config fixes both, PART's adapter gets the same), the same qwen2 LLM (width {dims['llm_width']}, "
            f"{dims['llm_layers']} layers, {dims['llm_heads']} heads / {dims['llm_kv_heads']} KV heads, SwiGLU "
            f"{4 * dims['llm_width']}, tied embeddings), vocabulary {dims['vocab_size']:,}. fp32 on CPU. In the timing "
            "processes the peer shares PART's encoder, LLM body and tied LM head modules (same classes from the same "
            "configs, and the same tensors in memory): only the adaptors differ, so the timings compare the models' "
            "structure and not the placement of two copies of a 300 MB embedding (an identical copy of the LM head "
            "weight ran a memory-bound decode step up to 12% faster or slower here). The memory processes build "
            "each model on its own.")
    if setup:
        add(f"- Parameters: PART {setup['part_parameters'] / 1e6:.1f} M, peer {setup['peer_parameters'] / 1e6:.1f} M. "
            f"Attention: PART {', '.join(setup['attention']['part'])}; peer {', '.join(setup['attention']['peer'])} "
            "(the peer's adaptor layers run its eager attention).")
        add(f"- Batch: {dims['batch_size']} clips of {dims['seconds']:g} s (speech-like synthetic audio), "
            f"{setup['feature_frames_per_clip']} LFR feature frames of 560 values per clip from "
            "`PartFeatureExtractor` (SenseVoice fbank + LFR 7/6) for both models; the same tokenizer, prompt "
            f"template and target ({dims['target_tokens']} tokens + eos = {setup['loss_positions_per_clip']} loss "
            "positions per clip).")
        add(f"- Audio positions per clip in the LLM: PART {setup['audio_positions_per_clip']['part']} "
            f"({setup['audio_token_rate']['part']:.2f}/s: conv1d stride 2), peer "
            f"{setup['audio_positions_per_clip']['peer']} ({setup['audio_token_rate']['peer']:.2f}/s: one per LFR "
            f"frame). LLM sequence length: PART {setup['sequence_length']['part']}, peer "
            f"{setup['sequence_length']['peer']}.")
    add("- Training step: forward + backward from `zero_grad(set_to_none=True)`, all parameters trainable (the "
        "optimizer step is left out for both; ZeRO-3 includes AdamW for both of its variants). PART computes the "
        "LM head on target positions only; the peer computes full logits and transformers' causal-LM loss.")
    add("- Timing: both models live in one process with the same threads and inputs; each round runs every "
        "variant once, alternating the order (A B, B A, ...) after one warm-up round. Ratios are per round "
        "(median, min, max over rounds). Throughput ratio = peer time / PART time.")
    add("- Peak memory: one fresh process per variant (same threads, same inputs). Headline = peak RSS minus the "
        "RSS after imports (the model, gradients, batch and step activations; the interpreter and libraries, "
        "identical for both, are left out). The whole-process peak RSS and the step's own high-water mark above "
        "the RSS before it (gradients dropped, allocator caches released via `malloc_trim`) are given as context.")

    _train_section(out, raw, summary)
    _generation_section(out, raw)
    _frontend_section(out, raw, summary)
    _data_section(out, raw)
    _zero3_section(out, raw)
    _scaling_section(out, raw, summary)
    _profile_section(out, raw)
    _limits_section(out, raw, summary)
    return "\n".join(out) + "\n"


def _targets_paragraph(summary: dict) -> str:
    notes = []
    ts = summary.get("train_step", {})
    if "throughput_ratio" in ts:
        notes.append(f"training throughput {ts['throughput_ratio']:.2f}x (target >= 1.25x)")
    if "peak_memory_ratio" in ts:
        notes.append(f"training peak memory {ts['peak_memory_ratio']:.2f}x (target <= 0.5x)")
    if "generation" in summary:
        notes.append(f"generation {summary['generation']['throughput_ratio']:.2f}x (target >= 1.0x)")
    if "front_end" in summary and "share_of_train_step" in summary["front_end"]:
        notes.append(f"front end {summary['front_end']['share_of_train_step'] * 100:.1f}% of a step (target < 5%)")
    if "data_pipeline" in summary:
        notes.append(f"collator {summary['data_pipeline']['loader_to_step_ratio']:.0f}x faster than the step")
    if "zero3" in summary and "held_fraction_max" in summary["zero3"]:
        notes.append(f"ZeRO-3 parameter share per rank {summary['zero3']['held_fraction_max']:.3f} (target 0.5 +- 10%)")
    return "In short: " + "; ".join(notes) + "." if notes else ""


def _train_section(out, raw, summary):
    add = out.append
    models = raw.get("models", {})
    train = models.get("train")
    memory = [m for m in raw.get("memory", []) if "variant" in m]
    if not train and not memory:
        return
    add("\n## 1. Training step\n")
    if train:
        add(f"- PART {_s(train['part_step_s'])}; peer {_s(train['peer_step_s'])}.")
        add(f"- Throughput ratio (PART/peer): {_r(train['throughput_ratio'])}.")
        if "ablation_target_only_head_ratio" in train:
            add(f"- Ablation, PART with full logits + transformers' loss (its target-only LM head off): "
                f"{_s(train['part_full_logits_step_s'])}. Target-only head alone: "
                f"{_r(train['ablation_target_only_head_ratio'])} faster; fewer audio positions alone (PART with "
                f"full logits vs peer): {_r(train['ablation_full_logits_throughput_ratio'])}.")
        if "what_if_sparse_embedding_grad_speedup" in train:
            add(f"- What-if (a proposed model change, not what PART does today): the input-embedding lookup with a "
                f"sparse gradient (`nn.Embedding.sparse = True` on the tied embedding; the summed gradient is dense and "
                f"equal): {_s(train['what_if_sparse_embedding_grad_step_s'])}, "
                f"{_r(train['what_if_sparse_embedding_grad_speedup'])} faster than PART today; vs peer "
                f"{_r(train['what_if_sparse_embedding_grad_throughput_ratio'])}.")
        frozen = train.get("llm_frozen")
        if frozen:
            add(f"- LLM frozen (the trainable set of PART's stages 1-2: encoder + adapter; the peer likewise): PART "
                f"{_s(frozen['part_step_s'])}, peer {_s(frozen['peer_step_s'])}, throughput ratio "
                f"{_r(frozen['throughput_ratio'])}.")
        in_process = train.get("in_process_step_memory")
        if in_process:
            add(f"- In-process cross-check of the step's high-water mark: PART {_mib(in_process['part']['delta'])}, "
                f"peer {_mib(in_process['peer']['delta'])} "
                f"({in_process['part']['delta'] / in_process['peer']['delta']:.2f}x).")
    if memory:
        add("\nPeak memory, one fresh process per variant:\n")
        add("| variant | LLM | RSS after imports | after build (model + batch) | process peak | peak - imports | "
            "step high-water above pre-step RSS |")
        add("|---|---|---|---|---|---|---|")
        for m in memory:
            variant = m["variant"] + (" (what-if: sparse input-embedding grad)" if m.get("sparse_embedding_grad") else "")
            add(f"| {variant} | {'frozen' if m['llm_frozen'] else 'trainable'} | {_mib(m['rss_after_imports'])} | "
                f"{_mib(m['rss_after_build'])} | {_mib(m['process_peak'])} | "
                f"{_mib(m['process_peak'] - m['rss_after_imports'])} | {_mib(m['step']['delta'])} |")
        ts = summary.get("train_step", {})
        if "llm_frozen" in ts and "peak_memory_ratio" in ts["llm_frozen"]:
            add(f"\nWith the LLM frozen, peak memory (peak - imports) is {ts['llm_frozen']['peak_memory_ratio']:.2f}x "
                f"the peer's (step high-water {ts['llm_frozen']['step_memory_delta_ratio']:.2f}x).")


def _generation_section(out, raw):
    generate = raw.get("models", {}).get("generate")
    if not generate:
        return
    add = out.append
    add("\n## 2. Generation\n")
    add(f"Batched greedy decoding of the 8 clips, exactly {generate['new_tokens_per_clip']} new tokens each "
        "(`min_new_tokens = max_new_tokens`, so eos cannot end either early), KV cache, features precomputed. "
        f"Prompt lengths: PART {generate['prompt_length']['part']}, peer {generate['prompt_length']['peer']}.\n")
    add(f"- PART {_s(generate['part_s'])} = {generate['part_tokens_per_s']:.1f} new tokens/s, real-time factor "
        f"{generate['part_rtf']:.3f}; peer {_s(generate['peer_s'])} = {generate['peer_tokens_per_s']:.1f} tokens/s, "
        f"RTF {generate['peer_rtf']:.3f}.")
    add(f"- Throughput ratio {_r(generate['throughput_ratio'])}. Prefill (generate with 1 new token: encoder, "
        f"adapter, prompt through the LLM) PART {generate['part_prefill_s']['median']:.2f} s vs peer "
        f"{generate['peer_prefill_s']['median']:.2f} s, ratio {_r(generate['prefill_ratio'])}; per decode step "
        f"{generate['decode_step_s']['part'] * 1000:.0f} ms (PART) vs {generate['decode_step_s']['peer'] * 1000:.0f} ms "
        f"(peer), ratio {_r(generate['decode_step_ratio'])} (from medians: (full - prefill) / {generate['new_tokens_per_clip'] - 1}; "
        "same LLM and batch, so about 1 is expected).")


def _frontend_section(out, raw, summary):
    frontend = raw.get("models", {}).get("frontend")
    train = raw.get("models", {}).get("train")
    if not frontend and not train:
        return
    add = out.append
    add("\n## 3. Front end\n")
    if frontend:
        add("Seconds of audio turned into features per second of wall time (8 clips of 6 s per call):\n")
        add("| front end | audio s / s | vs Whisper FE (padding to longest) | vs Whisper FE (default 30 s padding) |")
        add("|---|---|---|---|")
        labels = {"part_asrfront": "PartFeatureExtractor, SenseVoice LFR, asrfront backend",
                  "part_numpy": "PartFeatureExtractor, SenseVoice LFR, numpy backend",
                  "whisper_hf_longest": "transformers WhisperFeatureExtractor, padding='longest'",
                  "whisper_hf_30s": "transformers WhisperFeatureExtractor, default (30 s)"}
        for name, label in labels.items():
            versus = (f"{_r(frontend[name + '_vs_whisper'])} | {_r(frontend[name + '_vs_whisper_30s'])}"
                      if name + "_vs_whisper" in frontend else "- | -")
            add(f"| {label} | {frontend[name]['audio_seconds_per_s']:.0f} | {versus} |")
    if train:
        share = train["front_end_share_of_step"]
        add(f"\nShare of a training step (front end on the batch / PART step, per round): {share['median'] * 100:.2f}% "
            f"(min {share['min'] * 100:.2f}%, max {share['max'] * 100:.2f}%); the front end takes "
            f"{train['front_end_s']['median'] * 1000:.0f} ms per batch of 48 s of audio.")


def _data_section(out, raw):
    train = raw.get("models", {}).get("train")
    if not train:
        return
    add = out.append
    loader = train["loader_to_step_ratio"]
    add("\n## 4. Data pipeline\n")
    add(f"`trainers.PartDataCollator` over `PartProcessor`, from undecoded 16-bit WAV bytes (`{{'path', 'bytes'}}`, "
        "as the demo corpus stores them): decode, features, prompt, tokenization, labels, padding, for 8 samples per "
        "call, in the main process, interleaved with the training steps.\n")
    add(f"- Collator: {train['collator_s']['median'] * 1000:.0f} ms per batch = "
        f"{train['collator_samples_per_s']:.0f} samples/s; the training step consumes "
        f"{train['part_samples_per_s']:.2f} samples/s.")
    add(f"- Ratio (collator samples/s / step samples/s): {_r(loader, 1)}. Run inline, the collator adds "
        f"{100 / loader['median']:.1f}% to a step; with `dataloader_num_workers >= 1` it overlaps with the step. "
        "The loader does not starve the step.")


def _zero3_section(out, raw):
    zero3 = raw.get("zero3")
    if not zero3:
        return
    add = out.append
    add("\n## 5. DeepSpeed ZeRO-3, 2 ranks on CPU\n")
    if "error" in zero3:
        add(f"Failed: {zero3['error']}\n\n```\n{zero3.get('log_tail', '')[-3000:]}\n```")
        return
    add("Launched with `python -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/bench_zero3.py` "
        "(gloo), `deepspeed.initialize` with the repository's `examples/configs/ds_zero3.json` (\"auto\" filled as the "
        f"Trainer fills it: {json_brief(zero3['config'])}), torch AdamW. Global batch 8 (4 per rank, 1 thread per "
        "rank); the one-process reference is plain PyTorch with the whole batch, 2 threads, AdamW, run in the same "
        "launch on rank 0 and interleaved with the ZeRO-3 steps (rank 1 waits in a barrier).\n")
    held = zero3["parameter_bytes_held_per_rank"]
    add(f"- Parameter bytes: total {_mib(zero3['parameter_bytes_total'])}; held per rank "
        f"{', '.join(_mib(h) for h in held)} = {', '.join(f'{f:.4f}' for f in zero3['held_fraction_per_rank'])} of "
        f"the total ({zero3['held_vs_ideal']:.3f}x the ideal 1/{zero3['world_size']}). Of that, partitions "
        f"{', '.join(_mib(p) for p in zero3['parameter_bytes_partition_per_rank'])} and parameters kept whole "
        f"(below the persistence threshold) {', '.join(_mib(p) for p in zero3['parameter_bytes_persistent_per_rank'])}.")
    add(f"- Optimizer state per rank (fp32 partitions + Adam moments): "
        f"{', '.join(_mib(s) for s in zero3['optimizer_state_bytes_per_rank'])}; one process (Adam moments): "
        f"{_mib(zero3['single_optimizer_state_bytes'])}.")
    add(f"- Step time (forward + backward + AdamW): ZeRO-3 {_s(zero3['zero3_step_s'])} (slowest rank per step), "
        f"one process {_s(zero3['single_step_s'])}; ratio ZeRO-3 / one process {_r(zero3['step_time_ratio'])}. "
        "On one 2-core machine ZeRO-3 cannot be faster: the same arithmetic is split over the same cores, plus "
        "all-gathers of every layer's parameters (forward and backward) and reduce-scatters of the gradients "
        "through gloo; the figure measures that overhead, not a multi-machine speed-up.")
    losses = zero3["losses"]
    add(f"- Losses (sanity): ZeRO-3 rank 0 {', '.join(f'{v:.4f}' for v in losses['zero3'])}; one process "
        f"{', '.join(f'{v:.4f}' for v in losses['single'])}.")


def json_brief(config: dict) -> str:
    zero = config.get("zero_optimization", {})
    return (f"stage {zero.get('stage')}, fp32, reduce_bucket_size {zero.get('reduce_bucket_size')}, "
            f"prefetch {zero.get('stage3_prefetch_bucket_size')}, persistence threshold "
            f"{zero.get('stage3_param_persistence_threshold')}, micro batch {config.get('train_micro_batch_size_per_gpu')}, "
            f"clipping {config.get('gradient_clipping')}")


def _scaling_section(out, raw, summary):
    rows = summary.get("scaling")
    if not rows:
        return
    add = out.append
    add("\n## 6. Scaling\n")
    add("Training step (forward + backward, all parameters trainable, batch 8) as the clip length and the vocabulary "
        "grow. Step memory = the step's RSS high-water mark above the RSS before it (gradients, activations, "
        "logits), measured in the worker process after releasing allocator caches; parameters are listed apart. "
        "PART and the peer run interleaved at each point; the peer only where it is cheap.\n")
    add("All points of an axis run interleaved in the same rounds, so \"time vs first point\" is a per-round ratio "
        "too.\n")
    add("| axis | value | PART seq | PART step | PART time vs first point | PART step memory | peer seq | "
        "peer step | peer time vs first point | peer step memory | throughput ratio (min-max) | step memory ratio |")
    add("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        value = f"{row['value']:g} s" if row["axis"] == "seconds" else f"{int(row['value']):,}"
        growth = f"{row['peer_time_growth']:.2f}x" if "peer_time_growth" in row else "-"
        peer = ("| {peer_seq} | {peer_s:.2f} s | {growth} | {peer_mem} | {ratio:.2f}x ({lo:.2f}-{hi:.2f}) | "
                "{mem_ratio:.2f}x".format(
                    peer_seq=row["sequence_length"]["peer"], peer_s=row["peer_step_s"], growth=growth,
                    peer_mem=_mib(row["peer_step_memory_bytes"]), ratio=row["throughput_ratio"],
                    lo=row["throughput_ratio_min"], hi=row["throughput_ratio_max"],
                    mem_ratio=row["step_memory_ratio"]) if "peer_step_s" in row else "| - | - | - | - | - | -")
        add(f"| {row['axis']} | {value} | {row['sequence_length']['part']} | {row['part_step_s']:.2f} s | "
            f"{row['part_time_growth']:.2f}x | {_mib(row['part_step_memory_bytes'])} {peer} |")
    if any(r.get("measured_in") == "seconds" and r["axis"] == "vocab" for r in rows):
        add("\nThe vocabulary axis's full-vocabulary row is the clip-length axis's row at the same clip length "
            "(identical dimensions, measured once).")
    seconds = [r for r in rows if r["axis"] == "seconds"]
    if len(seconds) >= 2:
        first, last = seconds[0], seconds[-1]
        add(f"From {first['value']:g} s to {last['value']:g} s of audio ({last['value'] / first['value']:.0f}x the "
            f"audio), PART's step time grows {last['part_time_growth']:.1f}x and its step memory "
            f"{last['part_step_memory_bytes'] / max(first['part_step_memory_bytes'], 1):.1f}x: the vocabulary-sized "
            "gradient and the target-only head (fixed by the target length) are a constant floor, and the audio "
            "part (encoder, adapter, LLM positions at 8.3/s) grows with the clip.")
    with_peer = [r for r in seconds if "step_memory_ratio" in r]
    if len(with_peer) >= 2:
        short, longer = with_peer[0], with_peer[-1]
        add(f"The step-memory ratio goes from {short['step_memory_ratio']:.2f}x at {short['value']:g} s to "
            f"{longer['step_memory_ratio']:.2f}x at {longer['value']:g} s: both backward passes peak either in the "
            "logits phase (positions x vocabulary: the peer's grows with the audio, PART's is fixed by the targets) "
            "or in the phase where the tied embedding/LM head gradients exist (vocabulary x width, the same for both); "
            "for short clips the second phase sets both peaks, so the ratio approaches 1.")
    vocab = [r for r in rows if r["axis"] == "vocab"]
    if vocab:
        add("Along the vocabulary axis PART's cost grows with the embedding/head gradient (vocab x width) and the "
            "target-only head (targets x vocab); the peer's grows with (all positions) x vocab.")


def _profile_section(out, raw):
    profile = raw.get("models", {}).get("profile")
    if not profile:
        return
    add = out.append
    add("\n## Where the time goes (torch.profiler, one training step each)\n")
    for name in ("part", "peer"):
        if name not in profile:
            continue
        p = profile[name]
        parts = p["breakdown"]["forward_parts_s"]
        add(f"**{name.upper() if name == 'part' else 'Peer'}**: forward {p['breakdown']['forward_s']:.2f} s "
            f"({', '.join(f'{k} {v:.2f} s' for k, v in parts.items())}), backward {p['breakdown']['backward_s']:.2f} s "
            "(timed without the profiler).\n")
        add(_ops_table(p["top_ops"]))
        add("")
        if "generate_top_ops" in p:
            add(f"Generation ({name}), total self CPU {p['generate_total_self_cpu_s']:.2f} s:\n")
            add(_ops_table(p["generate_top_ops"][:6]))
            add("")


def _limits_section(out, raw, summary):
    """What limits a missed target and what would close it, from this run's numbers."""
    add = out.append
    models = raw.get("models", {})
    dims = models.get("dims") or {}
    setup = models.get("setup") or {}
    ts = summary.get("train_step", {})
    gen = summary.get("generation", {})
    notes = []
    if dims and setup:
        vocab, width = dims["vocab_size"], dims["llm_width"]
        embedding = vocab * width * BYTES_FP32
        params = setup["part_parameters"] * BYTES_FP32
        targets = dims["batch_size"] * setup["loss_positions_per_clip"]
        peer_positions = dims["batch_size"] * setup["sequence_length"]["peer"]
        head_part = targets * vocab * BYTES_FP32
        head_peer = peer_positions * vocab * BYTES_FP32
        if "peak_memory_ratio" in ts and ts["peak_memory_ratio"] > 0.5:
            frozen = ts.get("llm_frozen", {}).get("peak_memory_ratio")
            what_if = ts.get("what_if_sparse_embedding_grad")
            text = (
                f"**Training peak memory {ts['peak_memory_ratio']:.2f}x (target <= 0.5x).** With every parameter "
                f"trainable both models carry the same floor: parameters {_mib(params)} plus their gradients "
                f"{_mib(params)}, of which the tied {vocab:,} x {width} embedding/LM head is {_mib(embedding)} each. "
                f"In the backward pass the input-embedding lookup (`EmbeddingBackward`: a zero-filled dense "
                f"{_mib(embedding)} tensor, `fill_` + `index_add`) and the LM head each produce a dense gradient for "
                f"that one tied weight, and autograd adds them out of place (`aten::add` on two [{vocab}, {width}] "
                f"tensors), so an extra vocabulary-sized tensor is alive at PART's peak. "
                f"PART's only vocabulary-sized activation is the head on {targets} target positions "
                f"({_mib(head_part)} of logits; log-softmax and its gradient add two more); the peer's is all "
                f"{peer_positions} positions ({_mib(head_peer)} per copy), which is what the peer's extra "
                f"{_mib(ts['peer_peak_bytes'] - ts['part_peak_bytes'])} is. PART removes the peer's logits but not "
                f"the shared weights and gradients, so at this size (a {vocab:,} vocabulary on a {width}-wide, "
                f"{dims['llm_layers']}-layer LLM: the embedding is {embedding / params * 100:.0f}% of the parameters) "
                "the ratio stays above 0.5. ")
            if what_if:
                text += (
                    f"**What closes it:** let the input-embedding lookup produce a sparse gradient when the embedding "
                    f"is tied to the LM head and trainable (the sum with the head's dense gradient is dense and "
                    f"equal, max difference ~1e-7): measured here as a what-if (`nn.Embedding.sparse = True`), "
                    f"PART's peak drops to {_mib(what_if['part_peak_bytes'])}, {what_if['peak_memory_ratio']:.2f}x "
                    "the peer's")
                if "speedup_vs_part" in what_if:
                    text += (f", and its step gets {what_if['speedup_vs_part']:.2f}x faster (no zero-filled "
                             "vocab-sized tensor, no out-of-place add)")
                text += ". "
            if frozen is not None:
                text += (f"In PART's own schedules the LLM is frozen in stages 1-2 and trained through LoRA in stage 3, "
                         f"so the vocabulary-sized gradients never exist there: with the LLM frozen the ratio is "
                         f"{frozen:.2f}x. ")
            text += "bf16 weights/gradients would shrink both models alike and not change the ratio."
            notes.append(text)
        if "throughput_ratio" in ts and ts["throughput_ratio"] < 1.25:
            notes.append(
                f"**Training throughput {ts['throughput_ratio']:.2f}x (target >= 1.25x).** See the profile above: "
                "the shared vocabulary-sized work (LM head on targets, embedding gradient) and the LLM body bound "
                "PART's step.")
    if gen and gen.get("throughput_ratio", 2) < 1.0:
        notes.append(
            f"**Generation {gen['throughput_ratio']:.2f}x (target >= 1.0x).** Prefill ratio {gen['prefill_ratio']:.2f}x, "
            f"decode step ratio {gen['decode_step_ratio']:.2f}x: the decode steps (identical LLM and batch) dominate "
            "with this many new tokens; see the generation profile above.")
    front = summary.get("front_end", {})
    if front.get("share_of_train_step", 0) >= 0.05:
        train = models.get("train", {})
        notes.append(f"**Front end {front['share_of_train_step'] * 100:.1f}% of a step (target < 5%).** The front end "
                     f"costs a fixed {train.get('front_end_s', {}).get('median', 0) * 1000:.0f} ms per batch (asrfront "
                     "C kernels); the share is large only when the step itself is tiny. A DataLoader worker "
                     "(`dataloader_num_workers >= 1`) takes it off the training process entirely.")
    zero3 = summary.get("zero3", {})
    if zero3.get("held_vs_ideal", 1.0) > 1.10:
        notes.append(f"**ZeRO-3 parameter share {zero3['held_fraction_max']:.3f} per rank (target 0.5 +- 10%).** "
                     "Parameters below the persistence threshold stay whole on every rank.")
    add("\n## Missed targets: what limits them, what would close them\n")
    add("\n\n".join(notes) if notes else "Every target was met in this run.")
    if gen and gen.get("throughput_ratio", 0) >= 1.0:
        add(f"\nGeneration is met with a small margin ({gen['throughput_ratio']:.2f}x): PART's shorter prompt makes "
            f"prefill {gen['prefill_ratio']:.2f}x faster, but with {gen['new_tokens_per_clip']} new tokens the run is "
            f"dominated by decode steps, which are the same LLM and batch in both (ratio "
            f"{(gen.get('decode_step_ratio') or float('nan')):.2f}x): each step reads the whole {dims.get('vocab_size', 0):,}"
            " x width LM head for 8 rows (memory-bound `aten::mm` in the generation profile). The KV cache of PART "
            "is shorter by the audio positions saved, which matters for longer clips and outputs.")
