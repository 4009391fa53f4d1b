/* compiled by the fake kernel through ccache, so the tests see real cache hits; one object per goal */
const char *fake_goal = FAKE_GOAL;
