# The README's documentation list and its Markdown.
kvrt_add_test(unit test_docs_readme TIMEOUT 30)
target_compile_definitions(test_docs_readme PRIVATE KVRT_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
