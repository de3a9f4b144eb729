from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from timetodo.auth.models import EMAIL_MAX, PASSWORD_MAX, PASSWORD_MIN
from timetodo.core.validators import TimeZoneName

Locale = Literal["ru", "en"]


class RegisterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr = Field(max_length=EMAIL_MAX)
    password: str = Field(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)
    timezone: TimeZoneName = "UTC"
    locale: Locale = "en"


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    timezone: str
    locale: str
    is_admin: bool
    created_at: datetime


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timezone: TimeZoneName | None = None
    locale: Locale | None = None


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str | None = Field(
        description="Trade it for a new pair at /auth/refresh; null for an admin logging in during maintenance"
    )
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires")


class RefreshIn(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=200)


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, max_length=PASSWORD_MAX)
    new_password: str = Field(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)
