/* compiled by the fake kernel through ccache, so the tests see real cache hits; one object per goal */
const char *fake_goal = FAKE_GOAL;
#ifdef FAKE_BUILD_DIR
const char fake_build_dir[] = FAKE_BUILD_DIR; /* a build that leaks its directory into the image */
#endif
