"""Fits statsmodels' ExponentialSmoothing to the series the Rust test sends
(JSON on stdin) and prints its forecasts (JSON on stdout)."""
import json
import math
import sys
import warnings

from statsmodels.tsa.holtwinters import ExponentialSmoothing

warnings.simplefilter("ignore")


def number(v):
    """A finite float, or None (JSON has no NaN)."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


request = json.load(sys.stdin)
answer = {}
for s in request["series"]:
    model = ExponentialSmoothing(
        s["train"],
        trend=s["trend"],
        damped_trend=s["damped"],
        seasonal=s["seasonal"],
        seasonal_periods=s["period"] or None,
        initialization_method="estimated",
    )
    fit = model.fit()
    answer[s["name"]] = {
        "forecast": [number(v) for v in fit.forecast(s["h"])],
        "sse": number(fit.sse),
        "aicc": number(fit.aicc),
        "params": {
            k: number(v)
            for k, v in fit.params.items()
            if k in ("smoothing_level", "smoothing_trend", "smoothing_seasonal", "damping_trend")
        },
    }
json.dump(answer, sys.stdout, allow_nan=False)
