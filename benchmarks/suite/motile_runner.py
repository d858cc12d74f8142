"""motile (ILP, SCIP through ilpy) on celltrails' own detections.

The candidate graph links every detection to those of the next frame within a radius (scipy
cKDTree, physical scale: z times the anisotropy); motile selects nodes and edges under
MaxParents(1) and MaxChildren(2). Costs are in units of the nucleus radius r, as a user following
motile's tutorial would set them: an edge costs distance / r minus 1 (short links are rewarded),
a track start 1, a division 1, and every detection is rewarded for being selected (it passed the
detector's threshold, as in celltrails). The result is drawn as CTC masks exactly as celltrails
draws its own (``suite.ctc_result``), so only the linking differs.

    python -m suite.motile_runner DETECTIONS IMAGE RES --radius R
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd
from celltrails.ome_zarr_io import read_image_meta
from scipy.spatial import cKDTree

from suite.ctc_result import write_like_celltrails

PARAMETERS = {"candidate_radius_r": 1.5, "edge_cost": "distance / r - 1", "appear_cost": 1.0, "split_cost": 1.0,
              "node_selected_cost": -2.0, "max_parents": 1, "max_children": 2, "solver": "SCIP (ilpy)"}


def candidate_graph(detections: pd.DataFrame, radius: float, anisotropy: float) -> nx.DiGraph:
    """Nodes = detections (row index), edges t -> t+1 within the candidate radius, attribute
    ``distance_r`` = distance / r."""
    graph = nx.DiGraph()
    graph.add_nodes_from((int(i), {"t": int(t)}) for i, t in zip(detections.index, detections["t"]))
    position = detections[["z", "y", "x"]].to_numpy(float) * [anisotropy, 1.0, 1.0]
    frames = {t: np.flatnonzero(detections["t"].to_numpy() == t) for t in np.unique(detections["t"])}
    cutoff = PARAMETERS["candidate_radius_r"] * radius
    for t, rows in frames.items():
        if t + 1 not in frames:
            continue
        nxt = frames[t + 1]
        pairs = cKDTree(position[rows]).sparse_distance_matrix(cKDTree(position[nxt]), cutoff, output_type="ndarray")
        graph.add_edges_from((int(detections.index[rows[a]]), int(detections.index[nxt[b]]), {"distance_r": d / radius})
                             for a, b, d in pairs.tolist())
    return graph


def solve(graph: nx.DiGraph) -> nx.DiGraph:
    """motile's selected subgraph of the candidate graph."""
    # Imported here: the suite reads PARAMETERS even where motile is not installed.
    import ilpy
    import motile
    from motile.constraints import MaxChildren, MaxParents
    from motile.costs import EdgeSelectedCost, NodeAppearCost, NodeSelectedCost, NodeSplitCost

    solver = motile.Solver(motile.TrackGraph(graph, frame_attribute="t"))
    solver.add_cost(NodeSelectedCost(weight=0.0, constant=PARAMETERS["node_selected_cost"]))
    solver.add_cost(EdgeSelectedCost(weight=1.0, attribute="distance_r", constant=-1.0))
    solver.add_cost(NodeAppearCost(constant=PARAMETERS["appear_cost"]))
    solver.add_cost(NodeSplitCost(constant=PARAMETERS["split_cost"]))
    solver.add_constraint(MaxParents(PARAMETERS["max_parents"]))
    solver.add_constraint(MaxChildren(PARAMETERS["max_children"]))
    solver.solve(backend=ilpy.Preference.Scip)
    selected = solver.get_selected_subgraph()
    out = nx.DiGraph()
    out.add_nodes_from(selected.nodes)
    out.add_edges_from(selected.edges)
    return out


def tracks_table(selected: nx.DiGraph, detections: pd.DataFrame) -> pd.DataFrame:
    """celltrails tracks table (t, cell_id, track_id, parent_track_id, z, y, x, radius): a track
    continues through one-to-one links and ends at a division, whose daughters start new tracks."""
    children: dict[int, list[int]] = defaultdict(list)
    for a, b in selected.edges:
        children[a].append(b)
    parent = {b: a for a, b in selected.edges}
    track: dict[int, int] = {}
    parent_track: dict[int, int] = {}
    for node in sorted(selected.nodes, key=lambda n: (detections.at[n, "t"], n)):
        mother = parent.get(node)
        if mother is not None and len(children[mother]) == 1:
            track[node] = track[mother]
        else:
            track[node] = len(parent_track) + 1
            parent_track[track[node]] = track[mother] if mother is not None else -1
    cells = detections.loc[sorted(track)]
    tracks = pd.DataFrame({"t": cells["t"].to_numpy(), "cell_id": cells.index.to_numpy(),
                           "track_id": [track[n] for n in cells.index]})
    tracks["parent_track_id"] = tracks["track_id"].map(parent_track)
    for column in ("z", "y", "x", "radius"):
        tracks[column] = cells[column].to_numpy()
    return tracks


def run(detections_path: Path, image: Path, res: Path, radius: float) -> None:
    """Link ``detections_path`` with motile and write the CTC result ``res``."""
    meta = read_image_meta(image)
    detections = pd.read_parquet(detections_path)
    anisotropy = meta.voxel_size[0] / meta.voxel_size[2]
    selected = solve(candidate_graph(detections, radius, anisotropy))
    write_like_celltrails(tracks_table(selected, detections), image, res)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("detections", type=Path, help="celltrails results/{dataset}/detections.parquet")
    parser.add_argument("image", type=Path, help="celltrails results/{dataset}/image.ome.zarr (shape, voxel size)")
    parser.add_argument("res", type=Path, help="CTC result folder to write")
    parser.add_argument("--radius", type=float, required=True, help="nucleus radius, xy pixels")
    args = parser.parse_args()
    run(args.detections, args.image, args.res, args.radius)


if __name__ == "__main__":
    main()
