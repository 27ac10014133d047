def test_real(stack_settings, stack):
    print(stack.startup_s, stack.status())
