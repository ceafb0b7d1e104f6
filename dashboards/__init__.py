"""windtunnel dashboards: the live Dash app, the static report and their shared server-side aggregation."""
