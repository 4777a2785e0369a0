"""TES 1.1 API models (pydantic). Serialized with `by_alias` and without unset/None fields, because
clients such as py-tes reject keys the spec does not define."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    def to_json(self) -> dict:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ServiceType(_Model):
    group: str = "org.ga4gh"
    artifact: str = "tes"
    version: str = "1.1.0"


class ServiceOrganization(_Model):
    name: str
    url: str


class ServiceInfo(_Model):
    id: str
    name: str
    type: ServiceType = ServiceType()
    description: str | None = None
    organization: ServiceOrganization
    contact_url: str | None = Field(default=None, alias="contactUrl")
    documentation_url: str | None = Field(default=None, alias="documentationUrl")
    created_at: str | None = Field(default=None, alias="createdAt")
    updated_at: str | None = Field(default=None, alias="updatedAt")
    environment: str | None = None
    version: str
    storage: list[str] = Field(default_factory=list)
    backend_parameters: list[str] = Field(default_factory=list, alias="tesResources_backend_parameters")
