// A study opened on its own (priors, links from the desk): the image viewer filling the page.
// `?series=` opens that series first.
import { useLocation } from "preact-iso";
import { ImageViewer } from "../../viewers/image/ImageViewer";
import "./StudyViewer.css";

export function StudyViewer(props: { studyUid?: string }) {
  const { query } = useLocation();
  if (!props.studyUid) return null;
  return (
    <section class="study-viewer-page">
      <ImageViewer studyInstanceUid={props.studyUid} seriesInstanceUid={query.series} autoFocus />
    </section>
  );
}
