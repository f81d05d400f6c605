from faultstream.dashboard.views import workers

workers.render()
