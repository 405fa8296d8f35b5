"""Fleet monitoring: targets from the inventory (fleet), configs (render, dashboard), deploy."""
