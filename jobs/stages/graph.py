"""Connected components of a large graph in Spark: the large-star / small-star algorithm.

Kiveris et al., "Connected Components in MapReduce and Beyond" (SoCC 2014). Each node ends up linked to
the smallest node of its component, which is the cluster id the matching job wants (stable while the
membership does not change). Both steps shrink the graph towards stars around the minimum; the loop stops
when the edges form stars, in O(log n) rounds (a chain of n nodes included). Lineage
grows with every round, so it is cut every few rounds with a checkpoint.

Edges are ``(src, dst)`` string columns; the output has one row ``(node, component)`` per node that has
an edge (isolated nodes are the caller's business: they are their own component).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from models.core.errors import JobFailure

__all__ = ["ComponentsResult", "GraphError", "coherent_edges", "connected_components", "guarded_components",
           "split_components"]

log = logging.getLogger(__name__)


class GraphError(JobFailure, RuntimeError):
    """The components did not converge within the allowed rounds."""


@dataclass(frozen=True)
class ComponentsResult:
    components: object   # DataFrame (node, component)
    rounds: int


def _undirected(edges):
    from pyspark.sql import functions as F

    fwd = edges.select(F.col("src").alias("u"), F.col("dst").alias("v"))
    return fwd.unionByName(fwd.select(F.col("v").alias("u"), F.col("u").alias("v"))).where(F.col("u") != F.col("v"))


def _large_star(edges):
    """Each node u links every larger neighbour to m(u) = min(u and its neighbours)."""
    from pyspark.sql import functions as F

    adj = _undirected(edges).groupBy("u").agg(F.min("v").alias("mv"), F.collect_set("v").alias("nb"))
    return (adj.select(F.explode(F.filter("nb", lambda v: v > F.col("u"))).alias("src"),
                       F.least("u", "mv").alias("dst"))
            .distinct())


def _small_star(edges):
    """Each node u links itself and every smaller neighbour to the smallest of them."""
    from pyspark.sql import functions as F

    adj = (_undirected(edges).where(F.col("v") < F.col("u"))
           .groupBy("u").agg(F.min("v").alias("m"), F.collect_set("v").alias("nb")))
    return (adj.select(F.explode(F.array_union("nb", F.array("u"))).alias("src"), F.col("m").alias("dst"))
            .where(F.col("src") != F.col("dst")).distinct())


def _cut(df, reliable: bool):
    # Without a cut, each round's plan includes every earlier round: planning time and stack depth explode.
    return df.checkpoint(eager=True) if reliable else df.localCheckpoint(eager=True)


def _is_stars(edges) -> bool:
    """Whether the (larger, smaller) edges form stars: every node has at most one smaller neighbour, and
    no centre is itself linked to a smaller node. Both steps keep components connected, so a star then is
    a whole component, centred on its smallest node. One Spark job."""
    from pyspark.sql import functions as F

    two_parents = edges.groupBy("src").agg(F.count("*").alias("k")).where("k > 1").select("src")
    centre_with_parent = edges.join(edges.select(F.col("src").alias("dst")).distinct(), "dst", "left_semi") \
        .select("src")
    return two_parents.unionByName(centre_with_parent).limit(1).count() == 0


def connected_components(edges, max_rounds: int = 100, checkpoint_every: int = 2) -> ComponentsResult:
    """``(node, component)`` for every node of ``edges`` (columns ``src``, ``dst``), where ``component`` is
    the smallest node of its connected component."""
    from pyspark.sql import functions as F

    spark = edges.sparkSession
    reliable = bool(spark.sparkContext.getCheckpointDir())
    cur = _cut(edges.select(F.col("src").cast("string"), F.col("dst").cast("string"))
               .where(F.col("src").isNotNull() & F.col("dst").isNotNull()).distinct(), reliable)
    # Orient every edge as (larger, smaller) so that "unchanged" compares like with like.
    cur = cur.select(F.greatest("src", "dst").alias("src"), F.least("src", "dst").alias("dst")) \
        .where(F.col("src") != F.col("dst")).distinct()
    for rnd in range(1, max_rounds + 1):
        nxt = _small_star(_large_star(cur))
        nxt = _cut(nxt, reliable) if rnd % checkpoint_every == 0 else nxt.cache()
        cur.unpersist()
        cur = nxt
        if _is_stars(cur):
            # Converged: a star around each component's minimum. Every node -> its centre.
            nodes = cur.select(F.col("src").alias("node"), F.col("dst").alias("component"))
            centres = cur.select(F.col("dst").alias("node"), F.col("dst").alias("component"))
            log.info("connected components converged in %d rounds", rnd)
            return ComponentsResult(nodes.unionByName(centres).distinct(), rnd)
    raise GraphError(f"connected components did not converge in {max_rounds} rounds")


def guarded_components(edges, max_size: int, strict_thresholds: tuple[float, ...], max_rounds: int = 100,
                       checkpoint_every: int = 2):
    """Components of scored edges (``src``, ``dst``, ``score``) with the giant-component guard of
    :mod:`models.matching.cluster`: oversized components are re-clustered on their edges scoring at least
    each strict threshold in turn; parts still oversized are dissolved. Returns ``(DataFrame(node,
    component, guard), report)``; the report counts what the guard did."""
    from pyspark.sql import functions as F

    res = connected_components(edges, max_rounds, checkpoint_every)
    comp = res.components.withColumn("guard", F.lit(None).cast("string"))
    report = {"rounds": res.rounds, "oversized_components": 0, "guarded_products": 0, "dissolved_products": 0}
    scored = edges.select("src", "dst", "score")
    for t in strict_thresholds:
        sizes = comp.groupBy("component").count()
        big = sizes.where(F.col("count") > max_size).select("component")
        n_big = big.count()
        if n_big == 0:
            break
        if report["oversized_components"] == 0:
            report["oversized_components"] = n_big
        members = comp.join(big, "component", "left_semi")
        keep = comp.join(big, "component", "left_anti")
        inner = (scored.where(F.col("score") >= t)
                 .join(members.select(F.col("node").alias("src"), F.col("component").alias("c1")), "src")
                 .join(members.select(F.col("node").alias("dst"), F.col("component").alias("c2")), "dst")
                 .where(F.col("c1") == F.col("c2")).select("src", "dst"))
        sub = connected_components(inner, max_rounds, checkpoint_every)
        report["rounds"] += sub.rounds
        # Members left without a strict edge become singletons.
        relabelled = (members.select("node").join(sub.components, "node", "left")
                      .select("node", F.coalesce("component", "node").alias("component"),
                              F.lit(f"strict:{t:g}").alias("guard")))
        comp = _cut(keep.select("node", "component", "guard").unionByName(relabelled),
                    bool(edges.sparkSession.sparkContext.getCheckpointDir()))
        log.warning("cluster guard: %d components over %d products re-clustered at score >= %g",
                    n_big, max_size, t)
    sizes = comp.groupBy("component").count()
    big = sizes.where(F.col("count") > max_size).select("component")
    dissolved = comp.join(big, "component", "left_semi")
    n_dissolved = dissolved.count()
    if n_dissolved:
        log.warning("cluster guard: %d products in components still over %d dissolved into singletons",
                    n_dissolved, max_size)
        if report["oversized_components"] == 0:
            report["oversized_components"] = big.count()
        comp = comp.join(big, "component", "left_anti").unionByName(
            dissolved.select("node", F.col("node").alias("component"), F.lit("dissolved").alias("guard")))
    report["guarded_products"] = comp.where(F.col("guard").isNotNull()).count()
    report["dissolved_products"] = n_dissolved
    return comp, report


def coherent_edges(edges, min_score: float = 0.0, margin: float | None = None):
    """The scored edges (``src``, ``dst``, ``score``) that link products (:func:`models.matching.cluster.
    coherent_edges`): ``score >= min_score`` and, with a ``margin``, within ``margin`` of both ends' best
    linking score. Two aggregations and two joins: linear in the edges."""
    from pyspark.sql import functions as F

    e = edges.select("src", "dst", F.col("score").cast("double")).where(F.col("score") >= F.lit(float(min_score)))
    if margin is None:
        return e
    ends = e.select(F.col("src").alias("n"), "score").unionByName(e.select(F.col("dst").alias("n"), "score"))
    best = ends.groupBy("n").agg(F.max("score").alias("best"))
    m = F.lit(float(margin))
    return (e.join(best.toDF("src", "best_src"), "src").join(best.toDF("dst", "best_dst"), "dst")
            .where((F.col("score") >= F.col("best_src") - m) & (F.col("score") >= F.col("best_dst") - m))
            .select("src", "dst", "score"))


def split_components(comp, edges, threshold: float, complete_groups: bool = False):
    """Each component of ``comp`` (``node, component, guard``) split by average linkage on its own edges
    (``src, dst, score``) at ``threshold`` (:func:`models.matching.cluster.average_linkage`, one
    ``applyInPandas`` group per component: the guard bounds their size); with ``complete_groups`` a merge growing
    a group of two or more needs every cross pair matched. Same columns back."""
    from pyspark.sql import functions as F

    from udfs.matching import LINKAGE_SCHEMA, make_linkage_fn

    c = comp.select("node", "component")
    inner = (edges.join(c.toDF("src", "c_src"), "src").join(c.toDF("dst", "c_dst"), "dst")
             .where(F.col("c_src") == F.col("c_dst"))
             .select(F.col("c_src").alias("component"), "src", "dst", "score"))
    parts = inner.groupBy("component").applyInPandas(make_linkage_fn(threshold, complete_groups), LINKAGE_SCHEMA)
    return (comp.join(parts, "node", "left")
            .select("node", F.coalesce("part", "component").alias("component"), "guard"))
