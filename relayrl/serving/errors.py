"""Every error the server gives is OpenAI's error JSON, `{"error": {message, type, param, code}}`, with a status
that says whose fault it is: 4xx the request's (`param` names the field), 5xx the server's."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from relayrl.serving.schemas import ErrorBody, ErrorResponse

log = logging.getLogger("relayrl.serve")
TYPE_TAGS = {"str", "int", "float", "bool"}  # pydantic names a union's branch in an error's location; not a field


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def body(self) -> ErrorResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return ErrorResponse(error=ErrorBody(message=str(self), type=kind, param=self.param, code=self.code))

    def response(self) -> JSONResponse:
        return JSONResponse(self.body().model_dump(), status_code=self.status)


def field_path(loc: tuple) -> str | None:
    """`messages.0.role` from pydantic's ('body', 'messages', 0, 'role'), cut where a union's branch is named."""
    parts = []
    for part in loc[1:] if loc[:1] == ("body",) else loc:
        if isinstance(part, str) and (not part.isidentifier() or part in TYPE_TAGS or part[:1].isupper()):
            break
        parts.append(str(part))
    return ".".join(parts) or None


def validation_error(exc: RequestValidationError) -> APIError:
    """400 naming the first field that failed (each union branch's complaint, when every branch failed)."""
    errors = exc.errors()
    if errors[0]["type"] == "json_invalid":
        return APIError(400, f"the body is not valid JSON: {errors[0].get('ctx', {}).get('error', '')}")
    param = field_path(errors[0]["loc"])
    reasons = dict.fromkeys(
        "not supported by this server" if e["type"] == "extra_forbidden" else e["msg"]
        for e in errors
        if field_path(e["loc"]) == param
    )
    return APIError(400, f"{param or 'body'}: {' or '.join(reasons)}", param)


def install(app: FastAPI) -> None:
    """Answer every failure in OpenAI's error JSON: ours, pydantic's, routing's (404, 405) and crashes (500)."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # a body is JSON only when its Content-Type says so: a web page can POST other types to a local server
        # without the browser asking first (CORS), so they are not read as JSON
        kind = request.headers.get("content-type", "")
        if "json" not in kind:
            message = f"send the body as JSON, with Content-Type: application/json (got {kind or 'no Content-Type'})"
            return APIError(400, message).response()
        return validation_error(exc).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}").response()
