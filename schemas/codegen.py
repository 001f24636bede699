"""What the compiled Avro readers and writers share: turning a schema into generated Python.

Each record schema becomes one generated function (``record``, written by the
subclass), which the generator executes once with its helpers and constants
in scope; named types are looked up as fastavro's parsed schema lists them.
"""

from __future__ import annotations

from typing import Any


class Generator:
    """Collects generated functions, constants and variable names for one parsed schema."""

    def __init__(self, parsed: dict[str, Any], helpers: dict[str, Any]) -> None:
        self.parsed = parsed
        self.helpers = helpers
        self.named: dict[str, Any] = dict(parsed.get("__named_schemas", {}))
        self.named.setdefault(parsed["name"], parsed)
        self.functions: dict[str, str] = {}  # record full name -> generated function name
        self.source: list[str] = []
        self.constants: dict[str, Any] = {}
        self._vars = 0

    def compile(self) -> Any:
        """The generated function of the top-level record."""
        entry = self.record(self.parsed)
        namespace = dict(self.helpers, **self.constants)
        exec("\n".join(self.source), namespace)
        return namespace[entry]

    def record(self, schema: dict[str, Any]) -> str:
        """Generate the function of a record schema (once) and return its name."""
        raise NotImplementedError

    def function_for(self, schema: dict[str, Any], prefix: str) -> tuple[str, bool]:
        """The generated function's name for a record, and whether it is still to be written.

        Registered before the record's fields are generated, so a recursive
        record calls its own function.
        """
        name = schema["name"]
        if name in self.functions:
            return self.functions[name], False
        fn = self.functions[name] = prefix + name.replace(".", "_")
        return fn, True

    def const(self, value: Any) -> str:
        """A name under which generated code sees ``value``."""
        name = f"_c{len(self.constants)}"
        self.constants[name] = value
        return name

    def var(self) -> str:
        """A fresh local variable name."""
        self._vars += 1
        return f"v{self._vars}"

    def resolve(self, schema: Any) -> Any:
        """A named type's schema, or ``schema`` itself."""
        if isinstance(schema, str) and schema in self.named:
            return self.named[schema]
        return schema
