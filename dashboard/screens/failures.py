from faultstream.dashboard.views import failures

failures.render()
