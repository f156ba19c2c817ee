"""End-effector waypoints for ALOHA's scripted experts: where each gripper goes, when, and how open it is.

A pose is the world pose of an arm's `gripper_link` (metres; quaternion w, x, y, z). In that frame x points
from the wrist to the finger tips, the fingers close along y, and z is the back of the hand. Each plan is a
list of timed waypoints per arm, interpolated linearly (positions, gripper) and spherically (orientations),
as in the ACT paper's scripted demonstrations (Zhao et al. 2023, arXiv 2304.13705). The numbers below are
this module's own, tuned in the joint-space replay until the success rates of bench/expert_success.py held.

Steps are control steps at 50 Hz. World frame: x from the left arm's base to the right arm's, z up, y
completing a right-handed frame; the table top is z = 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Pose = tuple[np.ndarray, np.ndarray]
"""(position (3,), quaternion (4,) w-x-y-z)."""

# Resting heights of the objects' centres once they have dropped onto the table (half their heights).
CUBE_REST_Z = 0.02
PEG_REST_Z = 0.01
SOCKET_REST_Z = 0.022
# Distance from gripper_link to the point between the finger tips where an object is pinched: the fingers
# taper to ~1 cm wide over their last 5 cm, ending 0.154 m from gripper_link.
FINGER_REACH = 0.154

OPEN, CLOSED = 1.0, 0.0


@dataclass(frozen=True)
class Waypoint:
    """Where one gripper should be at `step`, and how far open (normalized: 0 closed, 1 open)."""

    step: int
    pos: np.ndarray
    quat: np.ndarray
    gripper: float


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b (rotate by b, then by a, in world terms)."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([aw * bw - ax * bx - ay * by - az * bz,
                     aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw])


def axis_angle(axis: Sequence[float], angle: float) -> np.ndarray:
    """Unit quaternion for a rotation of `angle` radians about `axis`."""
    axis = np.asarray(axis, dtype=float)
    axis = axis / np.linalg.norm(axis)
    return np.concatenate([[np.cos(angle / 2)], np.sin(angle / 2) * axis])


def slerp(a: np.ndarray, b: np.ndarray, frac: float) -> np.ndarray:
    """Spherical interpolation between unit quaternions, along the shorter arc."""
    dot = float(np.dot(a, b))
    if dot < 0:  # q and -q are the same rotation: take the short way round
        b, dot = -b, -dot
    if dot > 0.9995:  # nearly equal: linear interpolation is exact enough and avoids dividing by ~0
        out = a + frac * (b - a)
        return out / np.linalg.norm(out)
    theta = np.arccos(dot)
    return (np.sin((1 - frac) * theta) * a + np.sin(frac * theta) * b) / np.sin(theta)


def gripper_quat(arm: str, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Orientation of an arm's gripper: facing the other arm, tipped down by `pitch`, turned about its axis by `roll`.

    pitch = pi/2 points the fingers straight down; roll = pi/2 makes them close vertically.
    """
    facing = axis_angle([0, 0, 1], 0.0 if arm == "left" else np.pi)  # the right arm is the left one turned round
    return quat_mul(quat_mul(facing, axis_angle([0, 1, 0], pitch)), axis_angle([1, 0, 0], roll))


def interpolate(plan: Sequence[Waypoint], step: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The gripper pose and opening at `step`: held before the first and after the last waypoint."""
    if step <= plan[0].step:
        first = plan[0]
        return first.pos, first.quat, first.gripper
    for before, after in zip(plan[:-1], plan[1:], strict=True):
        if step <= after.step:
            frac = (step - before.step) / (after.step - before.step)
            pos = before.pos + frac * (after.pos - before.pos)
            gripper = before.gripper + frac * (after.gripper - before.gripper)
            return pos, slerp(before.quat, after.quat, frac), gripper
    last = plan[-1]
    return last.pos, last.quat, last.gripper


def plan_length(plans: dict[str, list[Waypoint]]) -> int:
    """Steps until every arm has reached its last waypoint."""
    return max(plan[-1].step for plan in plans.values())


def _wp(step: int, pos: Sequence[float], quat: np.ndarray, gripper: float) -> Waypoint:
    return Waypoint(step, np.asarray(pos, dtype=float), quat, gripper)


def transfer_cube_plan(start: dict[str, Pose], cube_xy: np.ndarray) -> dict[str, list[Waypoint]]:
    """Right arm picks the cube from above and lifts it; the left arm takes it, fingers closing top and bottom.

    The right fingers hold the cube's front and back faces and the left ones its top and bottom, so the two
    grippers never reach for the same face during the hand-over.
    """
    down = gripper_quat("right", pitch=np.pi / 2)
    side = gripper_quat("left", roll=np.pi / 2)
    cube = np.array([cube_xy[0], cube_xy[1], CUBE_REST_Z])
    grasp = cube + [0, 0, FINGER_REACH - 0.011]  # tips 0.9 cm above the table
    meet = np.array([0.0, 0.5, 0.25])  # where the cube is handed over
    held = meet + [0, 0, FINGER_REACH - 0.011]  # right gripper when the cube's centre is at `meet`
    take = meet - [FINGER_REACH - 0.02, 0, 0]  # left tips reach the cube's far face
    right = [
        _wp(0, start["right"][0], start["right"][1], CLOSED),
        _wp(60, grasp + [0, 0, 0.08], down, OPEN),
        _wp(100, grasp, down, OPEN),
        _wp(125, grasp, down, CLOSED),
        _wp(185, held, down, CLOSED),
        _wp(265, held, down, CLOSED),
        _wp(285, held, down, OPEN),
        _wp(330, held + [0.05, 0, 0.06], down, OPEN),
    ]
    left = [
        _wp(0, start["left"][0], start["left"][1], CLOSED),
        _wp(120, take - [0.1, 0, 0], side, OPEN),
        _wp(205, take - [0.1, 0, 0], side, OPEN),
        _wp(235, take, side, OPEN),
        _wp(260, take, side, CLOSED),
        _wp(330, take, side, CLOSED),
    ]
    return {"left": left, "right": right}


def insertion_plan(start: dict[str, Pose], peg_xy: np.ndarray, socket_xy: np.ndarray) -> dict[str, list[Waypoint]]:
    """Right arm picks the peg, left arm the socket; both lift and meet so the peg slides in to touch the pin.

    The peg is held 2 cm right of its centre and the socket 3 cm left of its centre, leaving the ends that
    meet free. The peg (2 cm thick) enters the socket (3.6 cm bore) along x and must go 2 cm deep to reach the pin.
    """
    down_r = gripper_quat("right", pitch=np.pi / 2)
    down_l = gripper_quat("left", pitch=np.pi / 2)
    peg_grip, socket_grip = 0.02, -0.03  # along x, from each object's centre
    peg = np.array([peg_xy[0] + peg_grip, peg_xy[1], PEG_REST_Z])
    socket = np.array([socket_xy[0] + socket_grip, socket_xy[1], SOCKET_REST_Z])
    peg_reach, socket_reach = FINGER_REACH - 0.006, FINGER_REACH - 0.018
    lift_z = 0.22  # height of both objects' centres while they meet
    centre = np.array([0.0, 0.5, lift_z])
    # Object centres: the socket's 6 cm left of `centre`, the peg's sliding from 14 cm to 9.5 cm right of the
    # socket's (its end 2 cm short of the socket's mouth, then 0.5 cm past the pin's end, so it presses on it).
    socket_at = centre - [0.06, 0, 0]
    peg_out, peg_in = socket_at + [0.14, 0, 0], socket_at + [0.095, 0, 0]
    right = [
        _wp(0, start["right"][0], start["right"][1], CLOSED),
        _wp(70, peg + [0, 0, peg_reach + 0.08], down_r, OPEN),
        _wp(110, peg + [0, 0, peg_reach], down_r, OPEN),
        _wp(135, peg + [0, 0, peg_reach], down_r, CLOSED),
        _wp(200, peg_out + [peg_grip, 0, peg_reach], down_r, CLOSED),
        _wp(230, peg_out + [peg_grip, 0, peg_reach], down_r, CLOSED),
        _wp(290, peg_in + [peg_grip, 0, peg_reach], down_r, CLOSED),
        _wp(330, peg_in + [peg_grip, 0, peg_reach], down_r, CLOSED),
    ]
    left = [
        _wp(0, start["left"][0], start["left"][1], CLOSED),
        _wp(70, socket + [0, 0, socket_reach + 0.08], down_l, OPEN),
        _wp(110, socket + [0, 0, socket_reach], down_l, OPEN),
        _wp(135, socket + [0, 0, socket_reach], down_l, CLOSED),
        _wp(200, socket_at + [socket_grip, 0, socket_reach], down_l, CLOSED),
        _wp(330, socket_at + [socket_grip, 0, socket_reach], down_l, CLOSED),
    ]
    return {"left": left, "right": right}
