"""The task farm's control-plane side: task states, claims, the reaper, explanations, task types."""
