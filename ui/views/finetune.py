"""Fine-tune: LoRA training (`raft train`) on a generated RAFT set with a live loss chart, then the
`raft eval` comparison (base + RAG vs fine-tuned + RAG at retrieval top-k) as a table and a chart;
adapters listed, each loadable for chat (its merged checkpoint becomes this session's model).

Training runs in this script run on the CPU (or the configured device); `train_lora`'s `on_step`
callback feeds the live chart.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from jamba_stack.app.settings import Settings, load_settings
from jamba_stack.ui import session
from jamba_stack.ui.backend import list_raft_sets, local_model_path
from jamba_stack.ui.errors import UIError

KS = (3, 5, 7)
MERGED = "merged"


def list_adapters(s: Settings) -> list[Path]:
    root = s.adapters_dir
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if (p / "adapter_config.json").is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def adapter_meta(adapter: Path) -> dict[str, Any]:
    path = adapter / "ui_meta.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def check_name(name: str, what: str) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise UIError(f"{what} {name!r} is invalid: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def train(
    s: Settings, data: Path, base: str, out: Path, r: int, steps: int, lr: float, max_len: int
) -> list[float]:
    """Train, chart each step's loss, merge the adapter into `out/merged`. Returns the losses.
    Raises `UIError` for bad options, `RaftDataError`, `OptionalDependencyError` (no peft)."""
    from jamba_stack.retrieval.raft.train import TrainConfig, train_lora, write_merged_checkpoint

    if r < 1 or steps < 1:
        raise UIError(f"LoRA rank {r} and steps {steps} are invalid: use rank >= 1 and steps >= 1")
    if not Path(base, "config.json").is_file():
        raise UIError(f"base model {base!r} is not a local checkpoint directory: give one with config.json")
    hidden = json.loads(Path(base, "config.json").read_text()).get("hidden_size")
    if isinstance(hidden, int) and r > hidden:
        raise UIError(
            f"LoRA rank {r} is over the model's hidden size {hidden}: use a rank from 1 to {hidden}"
        )
    cfg = TrainConfig(r=r, alpha=2 * r, lr=lr, steps=steps, max_len=max_len)
    bar = st.progress(0.0, text=f"Training: 0/{steps} steps")
    chart = st.empty()  # redrawn each step (this Streamlit has no add_rows)
    losses: list[float] = []

    def on_step(_step: int, value: float) -> None:
        losses.append(value)
        chart.line_chart(
            pd.DataFrame({"loss": losses}, index=range(1, len(losses) + 1)), x_label="step", y_label="loss"
        )
        bar.progress(len(losses) / steps, text=f"Training: {len(losses)}/{steps} steps, loss {value:.4f}")

    train_lora(Path(base), data, out, cfg, device=s.device, on_step=on_step)
    bar.progress(1.0, text="Merging the adapter into a checkpoint...")
    write_merged_checkpoint(Path(base), out, out / MERGED)
    (out / "ui_meta.json").write_text(json.dumps({"base": base, "set": data.name, "steps": steps, "r": r}))
    bar.progress(1.0, text=f"Done: {steps} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    return losses


def evaluate(
    s: Settings, data: Path, adapter: Path, base: str, ks: list[int], limit: int, max_tokens: int
) -> list[dict]:
    """`raft eval`'s comparison: the eval rows answered by the base model and by base + adapter,
    each with the retriever's top k chunks, for each k. Returns `compare_table`'s rows; also saved
    as `adapter/eval.json`. Raises `RaftDataError`, `UIError` for a set without its summary."""
    from jamba_stack.chat import chat_model
    from jamba_stack.retrieval.raft.evaluate import compare_table, load_eval_rows, rag_scores
    from jamba_stack.retrieval.search import open_retriever

    if not ks:
        raise UIError("no top-k chosen: pick at least one of 3, 5, 7")
    summary = data / "summary.json"
    if not summary.is_file():
        raise UIError(
            f"{data.name} has no summary.json (its collection): regenerate it on the RAFT builder page"
        )
    meta = json.loads(summary.read_text())
    rows = load_eval_rows(data)[: limit or None]
    retriever = open_retriever(
        meta["collection"], data_dir=s.data_dir, chroma_url=s.chroma_url, embedder=session.embedder(s)
    )
    kw = {"device": s.device, "dtype": s.dtype}
    bar = st.progress(0.0, text="Answering with the base model...")
    base_scores = rag_scores(chat_model(base, **kw), rows, retriever, ks, max_tokens=max_tokens)
    bar.progress(0.5, text="Answering with the fine-tuned model...")
    tuned = chat_model(str(adapter / MERGED), **kw)
    ft_scores = rag_scores(tuned, rows, retriever, ks, max_tokens=max_tokens)
    table = compare_table(base_scores, ft_scores, ks)
    (adapter / "eval.json").write_text(json.dumps({"set": data.name, "rows": len(rows), "table": table}))
    bar.progress(1.0, text=f"Done: {len(rows)} eval rows")
    return table


def show_eval(table: list[dict]) -> None:
    flat = [
        {"k": r["k"], "model": who, **{m: float(v) for m, v in r[key].items()}}
        for r in table
        for who, key in (("base + RAG", "base"), ("fine-tuned + RAG", "finetuned"))
    ]
    df = pd.DataFrame(flat)
    st.dataframe(df, hide_index=True)
    chart = df.assign(series=df["model"]).pivot(index="k", columns="series", values="f1")
    st.caption("F1 at each retrieval top-k")
    st.bar_chart(chart, stack=False, x_label="top-k", y_label="F1")


# ---- page -------------------------------------------------------------------------------------------
settings = session.settings()
st.title("Fine-tune")
st.caption("LoRA on a RAFT set, then base + RAG against fine-tuned + RAG on the set's eval split.")
session.random_model_notice(settings)

sets = list_raft_sets(settings)
st.subheader("Train")
if not sets:
    st.error("No generated set: build one on the RAFT builder page first.", icon="\u274c")
else:
    chosen = st.selectbox("Generated set", [p.name for p in sets], key="ft_set")
    data = settings.raft_sets_dir / chosen
    configured = load_settings()  # the base is the configured model, not a loaded adapter
    c1, c2, c3 = st.columns(3)
    base = c1.text_input(
        "Base model (checkpoint directory)", value=local_model_path(configured), key="ft_base"
    )
    rank = c2.number_input("LoRA rank", value=8, step=1, key="ft_rank")
    steps = c3.number_input("Steps", value=30, step=1, key="ft_steps")
    with st.expander("More options"):
        a1, a2, a3 = st.columns(3)
        lr = a1.number_input("Learning rate", value=3e-3, step=1e-4, format="%.5f", key="ft_lr")
        max_len = a2.number_input(
            "Max tokens per example", value=2048, min_value=32, step=64, key="ft_max_len"
        )
        name = a3.text_input("Adapter name", value=f"{chosen}-lora", key="ft_name")
    if st.button("Train", type="primary", key="ft_train"):
        with session.shows_errors("train the adapter"):
            out = settings.adapters_dir / check_name(name.strip(), "adapter name")
            losses = train(settings, data, base.strip(), out, int(rank), int(steps), float(lr), int(max_len))
            st.session_state["ft_losses"] = losses
            st.session_state["ft_adapter"] = out.name
            bad = [v for v in losses if not math.isfinite(v)]
            if bad:
                st.warning(f"{len(bad)} steps had a non-finite loss: lower the learning rate.")
            st.success(f"Adapter {out.name}: {len(losses)} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}.")

# ---- adapters: evaluate, load for chat -------------------------------------------------------------
st.subheader("Adapters")
adapters = list_adapters(settings)
if not adapters:
    st.info("No adapters yet: train one above.")
else:
    st.dataframe(
        [
            {
                "adapter": a.name,
                **{k: adapter_meta(a).get(k) for k in ("set", "base", "steps", "r")},
                "merged": (a / MERGED).is_dir(),
            }
            for a in adapters
        ],  # fmt: skip
        hide_index=True,
    )
    names = [a.name for a in adapters]
    last = st.session_state.get("ft_adapter")
    pick = st.selectbox("Adapter", names, index=names.index(last) if last in names else 0, key="ft_pick")
    adapter = settings.adapters_dir / pick
    meta = adapter_meta(adapter)
    e1, e2, e3 = st.columns(3)
    ks = e1.multiselect("Retrieval top-k", list(KS), default=list(KS), key="ft_ks")
    limit = e2.number_input("Eval rows (0: all)", value=0, min_value=0, step=1, key="ft_limit")
    eval_tokens = e3.number_input("Answer max tokens", value=384, min_value=8, step=16, key="ft_eval_tokens")
    b1, b2, b3 = st.columns(3)
    if b1.button("Evaluate", key="ft_eval"):
        with session.shows_errors("evaluate the adapter"):
            data = settings.raft_sets_dir / str(meta.get("set", ""))
            if not meta.get("set") or not (data / "chat.jsonl").is_file():
                raise UIError(
                    f"the set {adapter.name} was trained on is gone: train again on an existing set"
                )
            evaluate(
                settings, data, adapter, str(meta["base"]), [int(k) for k in ks], int(limit), int(eval_tokens)
            )
    # With a server the chat model is the server's: a session cannot swap it, so the button is off
    # and says how to serve the adapter instead.
    on_server = bool(settings.server_url)
    serve_hint = (
        f"The app chats with the server at {settings.server_url}: serve this adapter's merged checkpoint "
        f"there (jamba-stack serve --model {adapter / MERGED}, or jamba-stack up --model ...)."
    )
    if b2.button("Use for chat", key="ft_use", disabled=on_server, help=serve_hint if on_server else None):
        if (adapter / MERGED / "config.json").is_file():
            st.session_state[session.MODEL_OVERRIDE_KEY] = str(adapter / MERGED)
            st.rerun()
        st.error(f"{adapter.name} has no merged checkpoint: train it again on this page.", icon="\u274c")
    override = None if on_server else st.session_state.get(session.MODEL_OVERRIDE_KEY)
    if b3.button("Back to the configured model", disabled=not override, key="ft_unuse"):
        st.session_state.pop(session.MODEL_OVERRIDE_KEY, None)
        st.rerun()
    if on_server:
        st.info(serve_hint)
    elif override:
        st.success(f"Chat uses {Path(override).parent.name} (merged checkpoint {override}).")
    if (adapter / "eval.json").is_file():
        st.markdown(f"**Evaluation of {adapter.name}** (base + RAG vs fine-tuned + RAG)")
        show_eval(json.loads((adapter / "eval.json").read_text())["table"])

if losses := st.session_state.get("ft_losses"):
    st.subheader("Last training run")
    st.line_chart(
        pd.DataFrame({"loss": losses}, index=range(1, len(losses) + 1)), x_label="step", y_label="loss"
    )
