"""`invoke explain CONFIG_X --target T`: why X has its value in that target's final .config.

Which fragment asked for it (file:line and its reason), the final value, the `depends on`
expression with each operand's current value, who selects it, and — when the request did not
land — the audit's explanation and fix.
"""

from __future__ import annotations

from ktailor.core.errors import InputError
from ktailor.farm.toolchain import make_vars
from ktailor.kconfig.dotconfig import final_value, parse_dotconfig, same_value
from ktailor.kconfig.fragments import load_fragments, requested_options
from ktailor.project.layout import Project


def explain_option(project: Project, option: str, target: str, version: str | None = None) -> str:
    from ktailor.kconfig import explain, expressions, kconfig_tree

    symbol = option.removeprefix("CONFIG_").upper()
    kernel = project.versions.get_or_default(version)
    row = project.catalog.target(target)
    config = project.artifacts(kernel, row).kbuild / ".config"
    if not config.is_file():
        raise InputError(f"{config} does not exist; run `doit config:{row.name}` first.")
    from ktailor.stages.base import Context
    from ktailor.stages.config import other_trees, providers_of

    target_options = requested_options(load_fragments(project.fragment_paths(row), project.root), row.arch.name,
                                       kernel.version_tuple)
    requested = target_options.get(symbol)
    stage = Context(project, kernel, row)
    context = {"target_options": target_options, "providers": providers_of(stage), "other_trees": other_trees(stage)}
    final = final_value(parse_dotconfig(config), symbol)
    lines = [f"CONFIG_{symbol} in {row.name} (Linux {kernel.version}): final value {final}"]
    if requested:
        lines.append(f"  requested {requested.value} by {requested.where}: {requested.reason or '(no reason given!)'}")
    else:
        lines.append("  not requested by any fragment of this target: its value comes from kconfig defaults/selects")
    variables = make_vars(row, project.env)
    try:
        kconf = kconfig_tree.load_kconfig(project.source_tree(kernel), row.arch.kernel_arch, variables["CROSS_COMPILE"], config)
    except kconfig_tree.ExplainUnavailable as exc:
        lines.append(f"  (dependency details unavailable: {exc})")
        return "\n".join(lines)
    sym = kconf.syms.get(symbol)
    if sym is None or not sym.nodes:
        result = explain.explain(kconf, symbol, requested.value if requested else "y", final,
                                 srctree=project.source_tree(kernel), kernel_arch=row.arch.kernel_arch, **context)
        lines.append(f"  {result.detail}")
        return "\n".join(lines)
    node = sym.nodes[0]
    lines.append(f"  defined at {node.filename}:{node.linenr}" + (f" — \"{node.prompt[0]}\"" if node.prompt else
                                                                    " (no prompt: only selects/defaults set it)"))
    if sym.direct_dep is not kconf.y:
        lines.append(f"  depends on: {expressions.render_expression(sym.direct_dep)}")
    selecting = expressions.selectors(sym.rev_dep)
    if selecting:
        lines.append("  selected by: " + ", ".join(f"{s.name}(={s.str_value})" for s, _ in selecting))
    if requested and not same_value(requested.value, final):
        result = explain.explain(kconf, symbol, requested.value, final, srctree=project.source_tree(kernel),
                                 kernel_arch=row.arch.kernel_arch, **context)
        lines.append(f"  did not land: {result}")
    return "\n".join(lines)
