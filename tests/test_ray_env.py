"""Roles on resources: the actor options every role (sampler, teacher, eval) is placed with."""

from __future__ import annotations

from eopd_ray.actors.sampler_remote import sampler_actor_options
from eopd_ray.actors.teacher_deployment import deployment_options
from eopd_ray.config import SamplerConfig, TeacherServiceConfig
from eopd_ray.ray_env import role_placement

ROLE = {"eopd-ray.io/role": "sampler"}


def test_role_placement_leaves_out_what_is_not_set() -> None:
    assert role_placement(1.0, 0.0, {}, {}) == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert role_placement(2.0, 1.0, {"slot": 1.0}, ROLE) == {
        "num_cpus": 2.0,
        "num_gpus": 1.0,
        "resources": {"slot": 1.0},
        "label_selector": ROLE,
    }


def test_sampler_and_teacher_options_carry_resources_and_labels() -> None:
    sampler = SamplerConfig(num_cpus=2, num_gpus=1, resources={"slot": 1}, label_selector=ROLE)
    assert sampler_actor_options(sampler) == {
        "num_cpus": 2.0,
        "num_gpus": 1.0,
        "resources": {"slot": 1.0},
        "label_selector": ROLE,
        "max_restarts": 0,
        "max_concurrency": 1,
    }
    teacher = TeacherServiceConfig(num_gpus=1, resources={"big": 2}, label_selector=ROLE)
    assert deployment_options(teacher)["ray_actor_options"] == {
        "num_cpus": 1.0,
        "num_gpus": 1.0,
        "resources": {"big": 2.0},
        "label_selector": ROLE,
    }
