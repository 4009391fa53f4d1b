/* compiled by the fake kernel through ccache, so the tests see real cache hits; one object per goal */
const char *fake_goal = FAKE_GOAL;
const char *fake_file = __FILE__; /* as WARN()/BUG() put it into the kernel: must not depend on the build dir */
#ifdef FAKE_BUILD_DIR
const char fake_build_dir[] = FAKE_BUILD_DIR; /* a build that leaks its directory into the image */
#endif
