"""The campaign loop as a LangGraph StateGraph, checkpointed in SQLite.

    START -> fit -> propose -> review -> dispatch -> collect -> ingest -> fit (next round) | END

`review` calls `interrupt()` when the config requires approval; the checkpoint keeps the
paused graph across processes, and `Command(resume=decision)` continues it. A rejection sends
the round back to `propose`; `fit` and `propose` end the campaign when nothing is left to propose.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from agent import nodes
from agent.context import CampaignContext
from agent.state import LoopState
from perturbloop.errors import StoreError


def _with_fault_point(name: str, fn):
    """Run the node, then the fault-injection hook (a no-op unless PERTURBLOOP_KILL_AT names it)."""

    def node(state: LoopState, runtime):  # noqa: ANN001
        out = fn(state, runtime)
        nodes.fault_point(name, state["round"])
        return out

    node.__name__ = name
    return node


def build_graph(checkpointer: BaseCheckpointSaver | None = None) -> CompiledStateGraph:
    g = StateGraph(LoopState, context_schema=CampaignContext)
    for name in ("fit", "propose", "review", "dispatch", "collect", "ingest"):
        g.add_node(name, _with_fault_point(name, getattr(nodes, name)))

    def edge(node: str, stop: tuple[str, ...], then: str, otherwise: str = END) -> None:
        """`node` goes to `otherwise` when the state's status is one of `stop`, else to `then`."""
        g.add_conditional_edges(node, lambda state: otherwise if state.get("status") in stop else then,
                                [then, otherwise])

    g.add_edge(START, "fit")
    edge("fit", ("finished",), "propose")
    edge("propose", ("finished",), "review")
    edge("review", ("rejected",), "dispatch", "propose")
    g.add_edge("dispatch", "collect")
    edge("collect", ("waiting_for_lab",), "ingest")
    # after a partial delivery is ingested the round still waits for the rest of its batch
    edge("ingest", ("finished", "waiting_for_lab"), "fit")
    return g.compile(checkpointer=checkpointer)


@contextmanager
def open_checkpointer(location: str | Path) -> Iterator[BaseCheckpointSaver]:
    """The graph's checkpointer: a PostgreSQL URL keeps checkpoints in that database (LangGraph's
    PostgresSaver, tables created on first use); anything else is a SQLite file (created if missing).
    State holds only plain JSON values."""
    text = str(location)
    if text.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        from langgraph.checkpoint.postgres import PostgresSaver

        with PostgresSaver.from_conn_string(text.replace("postgresql+psycopg://", "postgresql://", 1)) as saver:
            saver.setup()
            yield saver
        return
    path = Path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        conn.close()
        raise StoreError(f"checkpoint file {str(path)!r} is not a readable SQLite database ({e}); move it aside "
                         "and run again (the campaign resumes from its store)") from None
    try:
        yield SqliteSaver(conn, serde=JsonPlusSerializer())
    finally:
        conn.close()
