"""Agent SDK: Agent, @tool, run loop, policy, memory, tracing (issue: agent SDK)."""
