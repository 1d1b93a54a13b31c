"""All tables. Import models from here."""

from control.models.base import BaseModel, JSONField, iso, now
from control.models.farm import FARM_MODELS, Node, Nonce, Task, TaskEvent, TaskLog
from control.models.registry import (
    REGISTRY_MODELS,
    ROLES,
    Change,
    Group,
    GroupChild,
    GroupUser,
    Provider,
    Space,
    SpaceGroup,
    SpaceUser,
    SshKey,
    Support,
    Token,
    User,
)

__all__ = [
    "BaseModel", "JSONField", "iso", "now", "REGISTRY_MODELS", "ROLES", "Change", "Group",
    "GroupChild", "GroupUser", "Provider", "Space", "SpaceGroup", "SpaceUser", "SshKey",
    "Support", "Token", "User", "FARM_MODELS", "Node", "Nonce", "Task", "TaskEvent", "TaskLog",
]
