// The shell: who is logged in, the header, and one lazily loaded module per page so the
// clinic desk does not download the viewers.
import { useEffect } from "preact/hooks";
import { ErrorBoundary, LocationProvider, Route, Router, lazy, useLocation } from "preact-iso";
import { sessionExpired } from "./api";
import { Header } from "./components/Header";
import { LoginPage } from "./pages/Login";
import { homePath, loadMe, me } from "./session";
import { prefetchWorklist } from "./pages/worklist/prefetch";
import { prefetchEcg } from "./viewers/ecg/prefetch";

// The session check starts as the shell's code runs, not after its first paint (an effect
// waits for a frame); a reader's first page: its data travels with it instead of after it.
void loadMe();
if (location.pathname === "/app/worklist") prefetchWorklist();
// An ECG opened on its own: the samples and the page's code load beside the session check.
const ecgSop = /^\/app\/ecg\/([^/]+)$/.exec(location.pathname)?.[1];
if (ecgSop) {
  prefetchEcg(decodeURIComponent(ecgSop));
  void import("./pages/viewer/EcgPage");
}

const Desk = lazy(() => import("./pages/desk/Desk").then((m) => m.Desk));
const CaseView = lazy(() => import("./pages/desk/CaseView").then((m) => m.CaseView));
const Worklist = lazy(() => import("./pages/worklist/Worklist").then((m) => m.Worklist));
const Workspace = lazy(() => import("./pages/reading/Workspace").then((m) => m.Workspace));
const Admin = lazy(() => import("./pages/admin/Admin").then((m) => m.Admin));
const Dashboard = lazy(() => import("./pages/admin/Dashboard").then((m) => m.Dashboard));
const StudyViewer = lazy(() => import("./pages/viewer/StudyViewer").then((m) => m.StudyViewer));
const EcgPage = lazy(() => import("./pages/viewer/EcgPage").then((m) => m.EcgPage));
const Consults = lazy(() => import("./pages/consult/Consults").then((m) => m.Consults));
const ConsultRoom = lazy(() => import("./pages/consult/ConsultRoom").then((m) => m.ConsultRoom));
const NotFound = lazy(() => import("./pages/NotFound").then((m) => m.NotFound));

function Home() {
  const { route } = useLocation();
  useEffect(() => {
    if (me.value) route(homePath(me.value.role), true);
  }, [me.value]);
  return null;
}

function Pages() {
  if (me.value === undefined) return <div class="loading" aria-busy="true" />;
  if (me.value === null || sessionExpired.value) return <LoginPage />;
  return (
    <>
      <Header />
      <main id="main">
        <ErrorBoundary>
          <Router>
            <Route path="/app/" component={Home} />
            <Route path="/app/desk" component={Desk} />
            <Route path="/app/cases/:caseId" component={CaseView} />
            <Route path="/app/worklist" component={Worklist} />
            <Route path="/app/read/:caseId" component={Workspace} />
            <Route path="/app/studies/:studyUid" component={StudyViewer} />
            <Route path="/app/ecg/:sopUid" component={EcgPage} />
            <Route path="/app/consults" component={Consults} />
            <Route path="/app/consults/:consultId" component={ConsultRoom} />
            <Route path="/app/admin/:section?" component={Admin} />
            <Route path="/app/dashboard" component={Dashboard} />
            <Route default component={NotFound} />
          </Router>
        </ErrorBoundary>
      </main>
    </>
  );
}

export function App() {
  return (
    <LocationProvider>
      <Pages />
    </LocationProvider>
  );
}
