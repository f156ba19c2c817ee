"""Push planner for gym-pusht: picks each push by simulating candidates on a copy of the scene.

The PushT block has no floor friction and the space damping is 0, so the block only moves while the pointer
pushes it: the scene is quasi-static and its state is just the two poses plus the pointer's velocity. That makes
a mirror simulator (same pymunk bodies, same PD pointer control) an exact model of the env. Every decision:

    real state --> for each contact point on the T's outline (edges and convex corners):
                     path around the block to just outside the contact (visibility graph, keeping clear of it)
                     for each push direction (the inward normal, and +-30 degrees):
                       push, then at several push lengths: retract, score the resulting block pose
               --> the candidate with the lowest score (log of the mean distance of the T's corners to the goal's,
                   plus a small price per step; reaching the success coverage beats everything) is executed on the
                   real env; when no push is worth its time, the one that brings the block closest is.

Pushes get slower as the block nears the goal, so the last ones are fine adjustments.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
import pymunk
import shapely
import shapely.ops
from gym_pusht.envs.pusht import PushTEnv
from pymunk._chipmunk_cffi import lib as chipmunk
from shapely.geometry import Point, Polygon

# Facts of gym-pusht 0.1.8 (read from its source): pointer radius, PD gains, physics step, goal pose, success.
AGENT_RADIUS = 15.0
KP, KV = 100.0, 20.0
DT = 0.01
SUBSTEPS = 10
GOAL_POSE = (256.0, 256.0, math.pi / 4)
SUCCESS_COVERAGE = 0.95
# The pointer's centre stays this far inside the walls (walls at 5 and 506, 2 px thick, pointer radius 15).
ARENA_LO, ARENA_HI = 24.0, 487.0

# The T's outline in the block frame (scale 30: a 120x30 bar on top of a 30x90 stem), counter-clockwise.
T_OUTLINE = np.array([(-60, 0), (60, 0), (60, 30), (15, 30), (15, 120), (-15, 120), (-15, 30), (-60, 30)], float)


def _contacts() -> list[tuple[np.ndarray, np.ndarray]]:
    """Contact points on the T (block frame) with the outward direction the pointer approaches from."""
    edges = [  # (a, b, outward normal, positions along the edge as fractions)
        ((-60, 0), (60, 0), (0, -1), (0.1, 0.3, 0.5, 0.7, 0.9)),
        ((60, 0), (60, 30), (1, 0), (0.5,)),
        ((60, 30), (15, 30), (0, 1), (0.18, 0.5)),  # Stays 19 px clear of the stem so the pointer fits.
        ((15, 30), (15, 120), (1, 0), (0.3, 0.62, 0.92)),
        ((15, 120), (-15, 120), (0, 1), (0.25, 0.5, 0.75)),
        ((-15, 120), (-15, 30), (-1, 0), (0.08, 0.38, 0.7)),
        ((-15, 30), (-60, 30), (0, 1), (0.5, 0.82)),
        ((-60, 30), (-60, 0), (-1, 0), (0.5,)),
    ]
    out = []
    for a, b, normal, fractions in edges:
        a, b = np.array(a, float), np.array(b, float)
        out += [(a + f * (b - a), np.array(normal, float)) for f in fractions]
    for corner in ((-60, 0), (60, 0), (60, 30), (15, 120), (-15, 120), (-60, 30)):  # Convex corners.
        c = np.array(corner, float)
        bisector = np.sign(c) * [1.0, 1.0] if corner[1] != 0 else np.array([np.sign(c[0]), -1.0])
        out.append((c, bisector / np.linalg.norm(bisector)))
    return out


CONTACTS = _contacts()
PUSH_ANGLES = (-math.radians(30), 0.0, math.radians(30))


def rotate(v: np.ndarray, angle: float) -> np.ndarray:
    """Rotate 2-D vectors (..., 2) by `angle` radians."""
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1]], axis=-1)


def to_world(points: np.ndarray, pose: tuple[float, float, float]) -> np.ndarray:
    """Block-frame points -> world points for a block at `pose` (x, y of the body origin, angle)."""
    return rotate(points, pose[2]) + np.array(pose[:2])


GOAL_OUTLINE = to_world(T_OUTLINE, GOAL_POSE)
GOAL_POLYGON = Polygon(GOAL_OUTLINE)


_CORNER_PAIRS = [(float(u), float(v), float(gx), float(gy)) for (u, v), (gx, gy) in zip(T_OUTLINE, GOAL_OUTLINE,
                                                                                         strict=True)]


def pose_error(pose: tuple[float, float, float]) -> float:
    """Mean distance (px) of the T's outline corners from where they are at the goal pose."""
    # Plain floats, not numpy: the planner scores ~10^4 poses per episode and numpy's overhead on 8 points is 6x this.
    x, y, angle = pose
    c, s = math.cos(angle), math.sin(angle)
    distances = (math.hypot(c * u - s * v + x - gx, s * u + c * v + y - gy) for u, v, gx, gy in _CORNER_PAIRS)
    return sum(distances) / len(_CORNER_PAIRS)


def coverage(pose: tuple[float, float, float]) -> float:
    """Fraction of the goal region the block covers (gym-pusht's reward before scaling)."""
    return Polygon(to_world(T_OUTLINE, pose)).intersection(GOAL_POLYGON).area / GOAL_POLYGON.area


@dataclass(frozen=True)
class SceneState:
    """Everything that moves: pointer position and velocity, block pose and velocities."""

    agent: tuple[float, float]
    agent_velocity: tuple[float, float]
    block_pose: tuple[float, float, float]
    block_velocity: tuple[float, float, float]

    @classmethod
    def from_env(cls, env: PushTEnv) -> SceneState:
        """Read the state of a (unwrapped) gym-pusht env."""
        a, b = env.agent, env.block
        return cls((a.position.x, a.position.y), (a.velocity.x, a.velocity.y),
                   (b.position.x, b.position.y, b.angle), (b.velocity.x, b.velocity.y, b.angular_velocity))


class MirrorSim:
    """A private pymunk scene built like gym-pusht's, stepped with the same PD pointer control."""

    def __init__(self) -> None:
        self.space = pymunk.Space()
        self.space.gravity = (0, 0)
        self.space.damping = 0.0  # As the env: velocities vanish unless something pushes.
        self.space.add(*[PushTEnv.add_segment(self.space, a, b, 2) for a, b in
                         (((5, 506), (5, 5)), ((5, 5), (506, 5)), ((506, 5), (506, 506)), ((5, 506), (506, 506)))])
        self.agent = PushTEnv.add_circle(self.space, (256, 400), AGENT_RADIUS)
        self.block, _ = PushTEnv.add_tee(self.space, (256, 300), 0)

    def load(self, state: SceneState) -> None:
        """Put the scene in `state`."""
        self.agent.position = state.agent
        self.agent.velocity = state.agent_velocity
        # Angle first: setting the angle turns the block about its centre of gravity, the position moves the origin.
        self.block.angle = state.block_pose[2]
        self.block.position = state.block_pose[:2]
        self.block.velocity = state.block_velocity[:2]
        self.block.angular_velocity = state.block_velocity[2]

    def save(self) -> SceneState:
        """The current state (restorable with `load`)."""
        a, b = self.agent, self.block
        return SceneState((a.position.x, a.position.y), (a.velocity.x, a.velocity.y),
                          (b.position.x, b.position.y, b.angle), (b.velocity.x, b.velocity.y, b.angular_velocity))

    def step(self, target: np.ndarray) -> None:
        """One env step towards `target` (float32, like the env's action): 10 physics steps of PD control."""
        tx, ty = float(target[0]), float(target[1])
        # Chipmunk's functions through pymunk's own binding: the planner runs this loop ~10^5 times per episode, and
        # pymunk's properties (a Vec2d per read) cost 5x the physics. The mirror has no callbacks and never adds or
        # removes shapes while stepping, which is all pymunk's Space.step adds around cpSpaceStep.
        body, space = self.agent._body, self.space._space
        for _ in range(SUBSTEPS):
            position, velocity = chipmunk.cpBodyGetPosition(body), chipmunk.cpBodyGetVelocity(body)
            vx, vy = velocity.x, velocity.y
            # The same float operations as the env's PD law, so both scenes stay identical.
            ax = KP * (tx - position.x) + KV * (0.0 - vx)
            ay = KP * (ty - position.y) + KV * (0.0 - vy)
            chipmunk.cpBodySetVelocity(body, (vx + ax * DT, vy + ay * DT))
            chipmunk.cpSpaceStep(space, DT)

    @property
    def agent_position(self) -> np.ndarray:
        return np.array(self.agent.position)

    @property
    def block_pose(self) -> tuple[float, float, float]:
        return (self.block.position.x, self.block.position.y, self.block.angle)


@dataclass
class PlannerSettings:
    """Speeds (px of target motion per step), margins (px) and the price of time."""

    travel_speed: float = 20.0
    """Pointer target speed when moving around the block."""
    approach_speed: float = 4.0
    """Slowest target speed at the end of a travel, so the pointer arrives at the contact nearly at rest."""
    clearance: float = AGENT_RADIUS + 4.0
    """Distance the pointer's centre keeps from the block while travelling."""
    corner_offset: float = AGENT_RADIUS + 16.0
    """Distance of the travel waypoints around the block (more than `clearance`: the lagging pointer cuts corners)."""
    push_steps: tuple[int, ...] = (2, 4, 7, 10, 14)
    """Push lengths (steps) scored for every contact and direction."""
    retract_steps: int = 3
    """Steps spent backing away from the block after a push."""
    retract_speed: float = 8.0
    """Target speed while backing away."""
    step_price: float = 0.01
    """Score added per step; the score is the log of the pose error, so this prices time in relative progress."""
    check_coverage_below: float = 12.0
    """Pose error (px) under which coverage is computed every simulated step to catch success."""


@dataclass
class Candidate:
    """One scored push: the targets to send and the outcome predicted by the mirror."""

    targets: list[np.ndarray]
    score: float
    error: float
    success: bool = False


def push_speed(error: float) -> float:
    """Target speed (px/step) while pushing: fast far from the goal, slow for the final adjustments."""
    return float(np.clip(0.12 * error, 1.5, 10.0))


def inside_arena(p: np.ndarray) -> bool:
    """Whether the pointer's centre can be at `p` without touching a wall."""
    return bool(ARENA_LO <= p[0] <= ARENA_HI and ARENA_LO <= p[1] <= ARENA_HI)


class TravelMap:
    """Shortest paths for the pointer around the block at one pose: a visibility graph on a ring of waypoints."""

    def __init__(self, pose: tuple[float, float, float], settings: PlannerSettings) -> None:
        self.polygon = Polygon(to_world(T_OUTLINE, pose))
        self.clearance = settings.clearance
        ring = self.polygon.buffer(settings.corner_offset, join_style="mitre", mitre_limit=3.0).exterior.coords[:-1]
        self.nodes = [np.array(p) for p in ring if inside_arena(np.array(p))]
        n = len(self.nodes)
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        clear = self._clear([self.nodes[i] for i, _ in pairs], [self.nodes[j] for _, j in pairs])
        self.links: dict[int, list[int]] = {i: [] for i in range(n)}
        for (i, j), ok in zip(pairs, clear, strict=True):
            if ok:
                self.links[i].append(j)
                self.links[j].append(i)

    def _clear(self, starts: list[np.ndarray], ends: list[np.ndarray], clearance: float | None = None) -> np.ndarray:
        """Which straight segments keep the pointer `clearance` away from the block (one vectorised query)."""
        if not starts:
            return np.zeros(0, bool)
        lines = shapely.linestrings(np.stack([np.stack(starts), np.stack(ends)], axis=1))
        return shapely.distance(lines, self.polygon) >= (self.clearance if clearance is None else clearance) - 1e-6

    def escape(self, start: np.ndarray) -> np.ndarray | None:
        """A point straight away from the block at `clearance` when `start` is closer than that, else None."""
        point = Point(start)
        if self.polygon.distance(point) >= self.clearance:
            return None
        nearest = np.array(shapely.ops.nearest_points(self.polygon.exterior, point)[0].coords[0])
        away = start - nearest
        norm = np.linalg.norm(away)
        if norm < 1e-9:
            return None
        return np.clip(nearest + away / norm * (self.clearance + 1.0), ARENA_LO, ARENA_HI)

    def path(self, start: np.ndarray, goal: np.ndarray) -> list[np.ndarray] | None:
        """Waypoints from `start` to `goal` (both included) that keep clear of the block, or None."""
        prefix = [start]
        escape = self.escape(start)
        if escape is not None:
            prefix, start = [start, escape], escape
        # A pointer that starts close to the block (in a pocket of the T, or where the episode put it) may leave
        # with less clearance than the rest of the path keeps.
        first = min(self.clearance, self.polygon.distance(Point(start)) - 0.5)
        if self._clear([start], [goal], first)[0]:
            return [*prefix, goal]
        n = len(self.nodes)
        from_start = self._clear([start] * n, self.nodes, first)
        to_goal = self._clear(self.nodes, [goal] * n)
        # Dijkstra over the waypoints; node n stands for the goal.
        dist = {i: float(np.linalg.norm(self.nodes[i] - start)) for i in range(n) if from_start[i]}
        previous: dict[int, int | None] = dict.fromkeys(dist)
        queue = [(d, i) for i, d in dist.items()]
        heapq.heapify(queue)
        while queue:
            d, i = heapq.heappop(queue)
            if d > dist.get(i, math.inf):
                continue
            if i == n:
                break
            neighbours = [(j, float(np.linalg.norm(self.nodes[j] - self.nodes[i]))) for j in self.links[i]]
            if to_goal[i]:
                neighbours.append((n, float(np.linalg.norm(goal - self.nodes[i]))))
            for j, length in neighbours:
                if d + length < dist.get(j, math.inf):
                    dist[j], previous[j] = d + length, i
                    heapq.heappush(queue, (d + length, j))
        if n not in dist:
            return None
        middle, i = [], previous[n]
        while i is not None:
            middle.append(self.nodes[i])
            i = previous[i]
        return [*prefix, *reversed(middle), goal]


def travel_targets(path: list[np.ndarray], settings: PlannerSettings) -> list[np.ndarray]:
    """Per-step pointer targets along `path` (its start excluded), slowing down to arrive almost at rest."""
    lengths = [float(np.linalg.norm(b - a)) for a, b in zip(path[:-1], path[1:], strict=True)]
    total = sum(lengths)
    targets, s = [], 0.0
    while s < total - 1e-6:
        s = min(total, s + float(np.clip(0.5 * (total - s), settings.approach_speed, settings.travel_speed)))
        rest, k = s, 0
        while k < len(lengths) - 1 and rest > lengths[k]:
            rest, k = rest - lengths[k], k + 1
        fraction = rest / lengths[k] if lengths[k] > 0 else 1.0
        targets.append((path[k] + fraction * (path[k + 1] - path[k])).astype(np.float32))
    return targets


class PushPlanner:
    """Chooses the next push by simulating every candidate on a mirror of the scene."""

    def __init__(self, settings: PlannerSettings | None = None) -> None:
        self.settings = settings or PlannerSettings()
        self.sim = MirrorSim()

    def plan(self, state: SceneState, steps_left: int) -> Candidate | None:
        """The best push from `state` that fits in `steps_left` steps (None when no contact can be reached)."""
        pose = state.block_pose
        speed = push_speed(pose_error(pose))
        travel_map = TravelMap(pose, self.settings)
        candidates: list[Candidate] = []
        for contact, normal in CONTACTS:
            inward = -rotate(normal, pose[2])
            start = to_world(contact, pose) - inward * (self.settings.clearance + 1.0)
            if not inside_arena(start):
                continue
            path = travel_map.path(np.array(state.agent), start)
            if path is None:
                continue
            travel = travel_targets(path, self.settings)[:steps_left]
            self.sim.load(state)
            done = self._run(travel)
            if done is not None or len(travel) == steps_left:  # Success on the way, or no time left to push.
                candidates.append(self._finish(travel[:done], success=done is not None))
                continue
            arrived = self.sim.save()
            for angle in PUSH_ANGLES:
                self.sim.load(arrived)
                direction = rotate(inward, angle)
                candidates += self._pushes(travel, start, direction, speed, steps_left)
        return choose(candidates, pose_error(pose))

    def _pushes(self, travel: list[np.ndarray], start: np.ndarray, direction: np.ndarray, speed: float,
                steps_left: int) -> list[Candidate]:
        """Push from the mirror's current state along `direction`; score a retreat after each push length."""
        out, pushed = [], list(travel)
        for k in range(1, max(self.settings.push_steps) + 1):
            if len(pushed) >= steps_left:
                break
            pushed.append((start + direction * speed * k).astype(np.float32))
            if self._run(pushed[-1:]) is not None:
                out.append(self._finish(pushed, success=True))
                break
            if k not in self.settings.push_steps:
                continue
            saved = self.sim.save()
            retreat, success = [], False
            for _ in range(self.settings.retract_steps):
                if len(pushed) + len(retreat) >= steps_left:
                    break
                retreat.append((self.sim.agent_position - direction * self.settings.retract_speed).astype(np.float32))
                if self._run(retreat[-1:]) is not None:
                    success = True
                    break
            out.append(self._finish(pushed + retreat, success=success))
            self.sim.load(saved)
        return out

    def _run(self, targets: list[np.ndarray]) -> int | None:
        """Step the mirror through `targets`; the number of steps taken when the block reached success, else None."""
        for i, target in enumerate(targets):
            self.sim.step(target)
            if self._success():
                return i + 1
        return None

    def _success(self) -> bool:
        pose = self.sim.block_pose
        return pose_error(pose) < self.settings.check_coverage_below and coverage(pose) > SUCCESS_COVERAGE

    def _finish(self, targets: list[np.ndarray], success: bool) -> Candidate:
        """Score the mirror's current outcome of sending `targets`."""
        error = pose_error(self.sim.block_pose)
        score = -1e6 + len(targets) if success else math.log(max(error, 1e-9)) + self.settings.step_price * len(targets)
        return Candidate(list(targets), score, error, success)


def choose(candidates: list[Candidate], error: float) -> Candidate | None:
    """The lowest score; when no push is worth its time, the one that brings the block closest (first on ties)."""
    if not candidates:
        return None
    best = min(candidates, key=lambda c: c.score)
    if best.success or best.score < math.log(max(error, 1e-9)):
        return best
    return min(candidates, key=lambda c: c.error)
