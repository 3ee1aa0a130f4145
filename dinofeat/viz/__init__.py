"""Pictures and videos of features: attention and dense-tool figures, contact sheets, videos."""
