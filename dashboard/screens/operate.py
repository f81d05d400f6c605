from faultstream.dashboard.views import operate

operate.render()
