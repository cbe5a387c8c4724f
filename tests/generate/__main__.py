"""`python -m tests.generate`: rewrite every generated file (docs reference blocks, the chart's README, the
`config` part of its values.schema.json). k8s/ is `cifar-job k8s render`'s output instead (see docs/pages/kubernetes.md).
"""

from job.core.atomic import atomic_write
from tests.generate import chart_docs, chart_schema, docs_blocks

for page in docs_blocks.BLOCKS:
    path = docs_blocks.PAGES / page
    atomic_write(path, docs_blocks.render(page, path.read_text()))
atomic_write(chart_schema.SCHEMA, chart_schema.render(chart_schema.SCHEMA.read_text()))
atomic_write(chart_docs.CHART / "README.md", chart_docs.render((chart_docs.CHART / "README.md.tmpl").read_text(), (chart_docs.CHART / "values.yaml").read_text()))
