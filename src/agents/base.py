"""What every agent is: a named object that turns one typed request into one typed result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from src.contracts import Message, StageResult
from src.utils.config import Config


@dataclass(frozen=True)
class Skill:
    """One stage an agent handles: request type, result type, and the method."""

    stage: str
    request: type[Message]
    result: type[StageResult]
    method: str


class Agent:
    """Base class: subclasses declare skills; `handle` dispatches a request."""

    skills: ClassVar[tuple[Skill, ...]] = ()

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    @property
    def name(self) -> str:
        return type(self).__name__

    def skill(self, stage: str) -> Skill:
        for skill in self.skills:
            if skill.stage == stage:
                return skill
        raise KeyError(f"{self.name} does not handle stage '{stage}'")

    def handle(self, stage: str, request: Message) -> StageResult:
        """Run `stage` on `request`; the request must be of the type the stage declares."""
        skill = self.skill(stage)
        if not isinstance(request, skill.request):
            raise TypeError(
                f"{self.name}.{stage} takes {skill.request.__name__}, got {type(request).__name__}"
            )
        method: Callable[[Any], StageResult] = getattr(self, skill.method)
        result = method(request)
        if not isinstance(result, skill.result):
            raise TypeError(f"{self.name}.{stage} returned {type(result).__name__}")
        return result
