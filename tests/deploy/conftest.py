from collections.abc import Callable
from typing import Any

import pytest
from deploy_support import CHART_DIR, NAMESPACE, RELEASE, Rendered


@pytest.fixture(scope="session")
def helm():
    return pytest.importorskip(
        "helm_python", reason="helm-python-sdk (the Helm library) is not installed"
    )


@pytest.fixture(scope="session")
def chart(helm):
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart) -> Callable[[dict[str, Any]], Rendered]:
    def _render(values: dict[str, Any]) -> Rendered:
        return Rendered(chart.render(values, name=RELEASE, namespace=NAMESPACE))

    return _render
