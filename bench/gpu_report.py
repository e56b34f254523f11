"""bench/gpu_check.py's results as markdown: what ran, exports, parity, timings.

The timing table's ratios are read off its own rows: "dense/sparse" > 1 means the sparse
(``com.microsoft.MoE``) graph was faster; "fp16 speed-up" is fp32 ms over fp16 ms of the same
graph; "% of GEMM" is the row's counted TFLOP/s over the reference GEMM rate (the GPU's fp16
GEMM measured in the same run; fp32 on a CPU).
"""

from __future__ import annotations

from collections import defaultdict

PARITY_COLUMNS = (  # a table's columns, as its markdown header says them
    "model | precision | graph | setting | cases passed | max abs diff | max mean diff | "
    "min labels equal | max tokens moved | router identical | nodes by provider | failures"
)
TIMING_COLUMNS = (
    "model | precision | graph | setting | batch | tasks | tokens | median ms | min ms | "
    "host arrays ms | GFLOP | TFLOP/s | % of GEMM"
)
GRAPH_COLUMNS = (("dense", "fp32"), ("sparse", "fp32"), ("dense", "fp16"), ("sparse", "fp16"))
RATIOS = (  # the speed table's ratio columns, in order: (numerator, denominator) ms
    ("dense fp32", "sparse fp32"),
    ("dense fp16", "sparse fp16"),
    ("dense fp32", "dense fp16"),
    ("sparse fp32", "sparse fp16"),
)


def reference_rate(data: dict) -> tuple[str, float]:
    """(dtype, TFLOP/s) of the reference GEMM: the faster of the start and end measurements."""
    gemm = data.get("reference_gemm", {})
    dtype = "float16" if gemm.get("device") == "cuda" else "float32"
    rates = [gemm.get(key, {}).get(dtype, 0.0) for key in ("tflops", "tflops_end")]
    return dtype, max(rates, default=0.0)


def header(data: dict) -> list[str]:
    env, gemm = data.get("environment", {}), data.get("reference_gemm", {})
    dtype, rate = reference_rate(data)
    lines = [
        f"device: {env.get('device')}{' (small sizes)' if env.get('small') else ''}; "
        f"GPU: {env.get('gpu', 'none')}; nvidia-smi: {env.get('nvidia_smi', 'n/a')}",
        f"torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), onnxruntime "
        f"{env.get('onnxruntime')} ({env.get('onnxruntime_file')}), Python {env.get('python')}, "
        f"{env.get('cpus')} CPUs",
        f"pydantic {env.get('carried', {}).get('pydantic')} ({env.get('pydantic_file')})",
        f"reference GEMM: torch {dtype} {gemm.get('n')}^3 on {gemm.get('device')}: "
        f"{rate:.3g} TFLOP/s (the faster of start and end; all: {_rates(gemm)})",
    ]
    if "seconds" in data:
        lines.append(f"check: {data['seconds']} s, passed: {data.get('passed')}")
    return lines


def _rates(gemm: dict) -> str:
    moments = {"tflops": "start", "tflops_end": "end"}
    return "; ".join(
        f"{moment} {dtype} {rate:.3g}"
        for key, moment in moments.items()
        for dtype, rate in gemm.get(key, {}).items()
    )


def exports_table(data: dict) -> list[str]:
    lines = ["| model | precision | export s | provider_graph | exporter |", "| --- " * 5 + "|"]
    for e in data.get("exports", []):
        mapping = ", ".join(
            f"{p.replace('ExecutionProvider', '')}: {g}" for p, g in e["provider_graph"].items()
        )
        exporter = ", ".join(f"{k} {v}" for k, v in e["exporter"].items())
        lines.append(
            f"| {e['model']} | {e['precision']} | {e['seconds']} | {mapping} | {exporter} |"
        )
    return lines


def table(columns: str, rows: list[list]) -> list[str]:
    """A markdown table: the header (``columns``, "a | b | ..."), its separator, one line per
    row of cells."""
    lines = [f"| {columns} |", "| --- " * (columns.count(" | ") + 1) + "|"]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def _key(row: dict) -> tuple:
    return row["model"], row["precision"], row["graph"], row["variant"]


def parity_table(data: dict) -> list[str]:
    """One line per graph and provider setting, its cases aggregated."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in data.get("parity", []):
        groups[_key(row)].append(row)
    placement = {_key(row): row for row in data.get("placement", [])}
    rows = []
    for key, cases in groups.items():
        worst = max((v for r in cases for v in r["map_error"].values()), default=0.0)
        mean = max((v for r in cases for v in r["map_mean_error"].values()), default=0.0)
        labels = min((v for r in cases for v in r["label_agreement"].values()), default=1.0)
        moved = max(r["tokens_moved"] for r in cases)
        nodes = placement.get(key, {}).get("nodes", {})
        where = ", ".join(f"{p.replace('ExecutionProvider', '')} {n}" for p, n in nodes.items())
        failures = "; ".join(f"{r['case']}: {f}" for r in cases for f in r["failures"])
        passed = f"{sum(r['passed'] for r in cases)}/{len(cases)}"
        identical = f"{sum(r['router_identical'] for r in cases)}/{len(cases)}"
        errors = f"{worst:.2e} | {mean:.1e} | {labels:.4%} | {moved:.2%}"
        rows.append([*key, passed, errors, identical, where or "n/a", failures or "-"])
    return table(PARITY_COLUMNS, rows)


def timing_rows(data: dict) -> list[str]:
    """Every timed row: bound to the device and with host arrays."""
    _, rate = reference_rate(data)
    rows = []
    for r in data.get("timing", []):
        if "skipped" in r:
            rows.append([*_key(r), r["batch"], r["tasks"], f"skipped: {r['skipped']}"] + [""] * 6)
            continue
        share = f"{r['tflops'] / rate:.1%}" if rate else "n/a"
        numbers = (r["ms"], r["min_ms"], r["host_ms"], r["gflop"], r["tflops"])
        formats = (".3f", ".3f", ".3f", ".1f", ".2f")
        measured = [format(value, spec) for value, spec in zip(numbers, formats, strict=True)]
        rows.append([*_key(r), r["batch"], r["tasks"], r["tokens"], *measured, share])
    return table(TIMING_COLUMNS, rows)


def speed_table(data: dict) -> list[str]:
    """Per model, batch and task count: the four graphs side by side and their ratios."""
    _, rate = reference_rate(data)
    cells: dict[tuple, dict] = defaultdict(dict)
    for r in data.get("timing", []):
        if r["variant"] == "strict" and "skipped" not in r:
            layout = (r["model"], r["batch"], r["tasks"], r["tokens"])
            cells[layout][(r["graph"], r["precision"])] = r
    lines = [
        "| model | batch | tasks | tokens | dense fp32 ms | sparse fp32 ms | dense fp16 ms | "
        "sparse fp16 ms | dense/sparse fp32 | dense/sparse fp16 | fp16 speed-up dense | "
        "fp16 speed-up sparse | best images/s | best % of GEMM |",
        "| --- " * 14 + "|",
    ]
    for (model, batch, tasks, tokens), row in cells.items():
        ms = {column: row[column]["ms"] if column in row else None for column in GRAPH_COLUMNS}
        best = min(row.values(), key=lambda r: r["ms"])
        share = f"{best['tflops'] / rate:.1%}" if rate else "n/a"
        times = " | ".join(f"{ms[c]:.3f}" if ms[c] else "n/a" for c in GRAPH_COLUMNS)
        lines.append(
            f"| {model} | {batch} | {tasks} | {tokens} | {times} | "
            f"{' | '.join(_ratio(ms, a, b) for a, b in RATIOS)} | "
            f"{1000 * batch / best['ms']:.1f} | {share} |"
        )
    return lines


def _ratio(ms: dict, a: str, b: str) -> str:
    """ms of column ``a`` over ms of column ``b`` ("graph precision")."""
    first, second = ms[tuple(a.split())], ms[tuple(b.split())]
    return f"{first / second:.2f}" if first and second else "n/a"


def error_lines(data: dict) -> list[str]:
    return [f"- {' '.join(_key(e))}: {e['error']}" for e in data.get("errors", [])]


def tables(data: dict) -> str:
    """What the run prints last: parity, errors, then the speed table."""
    parts = [*header(data), "", *parity_table(data), "", *error_lines(data), "", *speed_table(data)]
    return "\n".join(parts)


def markdown(data: dict) -> str:
    sections = [
        ("What ran", header(data)),
        ("Exports", exports_table(data)),
        ("Parity: the target provider against the CPU provider", parity_table(data)),
        ("Errors", error_lines(data) or ["none"]),
        ("Every timed row", timing_rows(data)),
        ("Speed: the four graphs side by side (medians, bound to the device)", speed_table(data)),
    ]
    return "\n".join(f"## {title}\n\n" + "\n".join(lines) + "\n" for title, lines in sections)
